<?php
/**
 * Turns a WHMCS service ($params) into the bridge's service.create event.
 */

namespace ProvisioningBridge;

final class OrderError extends \RuntimeException
{
}

final class Order
{
    /**
     * Letters, digits, '-' and '_': 64 characters, so one random byte masked to 6 bits
     * picks one without bias, and nothing a shell or SQL statement would treat specially.
     */
    const PASSWORD_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const PASSWORD_LENGTH = 24;

    public static function generatePassword(int $length = self::PASSWORD_LENGTH): string
    {
        $password = '';
        foreach (str_split(random_bytes($length)) as $byte) {
            $password .= self::PASSWORD_ALPHABET[ord($byte) & 63];
        }
        return $password;
    }

    /**
     * configoption4: one database per line, "name user". Returns [['name' => .., 'user' => ..], ...].
     */
    public static function parseDatabases(string $text): array
    {
        $databases = [];
        foreach (self::lines($text) as $number => $line) {
            $parts = preg_split('/\s+/', $line);
            if (count($parts) !== 2) {
                throw new OrderError("Databases, line $number: expected 'name user', got '$line'");
            }
            $databases[] = ['name' => $parts[0], 'user' => $parts[1]];
        }
        return $databases;
    }

    /** configoption5: one cron job per line, five schedule fields then the command. */
    public static function parseCronJobs(string $text): array
    {
        $jobs = [];
        foreach (self::lines($text) as $number => $line) {
            $parts = preg_split('/\s+/', $line, 6);
            if (count($parts) !== 6) {
                throw new OrderError("Cron jobs, line $number: expected 'minute hour day month weekday command'");
            }
            $jobs[] = [
                'minute' => $parts[0], 'hour' => $parts[1], 'day' => $parts[2],
                'month' => $parts[3], 'weekday' => $parts[4], 'command' => $parts[5],
            ];
        }
        return $jobs;
    }

    /**
     * The event. $passwords maps database name => password; every database needs one.
     */
    public static function serviceCreate(
        array $params,
        array $databases,
        array $passwords,
        array $cronJobs,
        string $callbackUrl,
        ?string $replaces = null
    ): array {
        foreach ($databases as $i => $database) {
            $databases[$i]['password'] = $passwords[$database['name']];
        }
        $data = [
            'service_id' => (string) $params['serviceid'],
            'panel' => self::option($params, 1, 'default'),
            'account' => ['username' => (string) ($params['username'] ?? ''), 'password' => (string) ($params['password'] ?? '')],
            'domain' => (string) ($params['domain'] ?? ''),
            'php_version' => self::option($params, 2, '8.2'),
            'ssl' => self::yes($params['configoption3'] ?? ''),
            'databases' => $databases,
            'cron_jobs' => $cronJobs,
        ];
        if ($callbackUrl !== '') {
            $data['callback_url'] = $callbackUrl;
        }
        if ($replaces !== null) {
            $data['replaces'] = $replaces;
        }
        return ['type' => 'service.create', 'data' => $data];
    }

    /**
     * What the order asks of the panel, as a digest: the event without its passwords (which
     * the Retry button sends afresh) or the callback address. A failed job's order sent again
     * with a different digest was changed, to get past what failed.
     */
    public static function digest(array $params, array $databases, array $cronJobs): string
    {
        $event = self::serviceCreate($params, $databases, array_fill_keys(array_column($databases, 'name'), ''), $cronJobs, '');
        unset($event['data']['account']['password']);
        foreach (array_keys($event['data']['databases']) as $i) {
            unset($event['data']['databases'][$i]['password']);
        }
        return hash('sha256', json_encode($event));
    }

    private static function option(array $params, int $n, string $default): string
    {
        $value = trim((string) ($params['configoption' . $n] ?? ''));
        return $value === '' ? $default : $value;
    }

    private static function yes($value): bool
    {
        return $value === true || in_array(strtolower(trim((string) $value)), ['on', 'yes', '1', 'true'], true);
    }

    /** Non-blank lines keyed by their 1-based line number (for error messages). */
    private static function lines(string $text): array
    {
        $lines = [];
        foreach (preg_split('/\r\n|\r|\n/', $text) as $i => $line) {
            $line = trim($line);
            if ($line !== '' && $line[0] !== '#') {
                $lines[$i + 1] = $line;
            }
        }
        return $lines;
    }
}
