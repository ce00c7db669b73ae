<?php
/**
 * The bridge connection as configured on the WHMCS server entry: address from
 * hostname/port/secure, secrets from the Access Hash (one key=value per line).
 */

namespace ProvisioningBridge;

final class Settings
{
    /** @var string e.g. https://bridge.example.com:8443 (no trailing slash) */
    public $baseUrl = '';
    /** @var string whsec_... */
    public $webhookSecret = '';
    /** @var string */
    public $adminToken = '';
    /** @var string where the bridge sends status callbacks */
    public $callbackUrl = '';
    /** @var string optional CA bundle for a bridge with a private certificate */
    public $caFile = '';

    public static function fromParams(array $params): Settings
    {
        $settings = new Settings();
        $hash = self::parseAccessHash((string) ($params['serveraccesshash'] ?? ''));
        $settings->baseUrl = self::baseUrl($params);
        $settings->webhookSecret = $hash['webhook_secret'] ?? '';
        $settings->adminToken = $hash['admin_token'] ?? '';
        $settings->caFile = $hash['ca_file'] ?? '';
        $settings->callbackUrl = $hash['callback_url'] ?? self::defaultCallbackUrl($params);
        return $settings;
    }

    /** What is missing before an order can be sent; empty when the settings are complete. */
    public function problems(): array
    {
        $problems = [];
        if ($this->baseUrl === '') {
            $problems[] = 'the server has no hostname or IP address';
        }
        if ($this->webhookSecret === '') {
            $problems[] = 'the Access Hash has no webhook_secret=whsec_... line';
        } else {
            try {
                Signature::key($this->webhookSecret);
            } catch (\InvalidArgumentException $e) {
                $problems[] = 'webhook_secret: ' . $e->getMessage();
            }
        }
        return $problems;
    }

    /** "key=value" lines; blank lines and lines starting with # are ignored. */
    public static function parseAccessHash(string $text): array
    {
        $values = [];
        foreach (preg_split('/\r\n|\r|\n/', $text) as $line) {
            $line = trim($line);
            if ($line === '' || $line[0] === '#' || strpos($line, '=') === false) {
                continue;
            }
            list($key, $value) = explode('=', $line, 2);
            $values[strtolower(trim($key))] = trim($value);
        }
        return $values;
    }

    private static function baseUrl(array $params): string
    {
        $host = trim((string) ($params['serverhostname'] ?? '')) ?: trim((string) ($params['serverip'] ?? ''));
        if ($host === '') {
            return '';
        }
        $scheme = self::isSecure($params) ? 'https' : 'http';
        if (strpos($host, ':') !== false && $host[0] !== '[') {
            $host = '[' . $host . ']';  // an IPv6 address
        }
        $port = (int) ($params['serverport'] ?? 0);
        return $scheme . '://' . $host . ($port > 0 ? ':' . $port : '');
    }

    private static function isSecure(array $params): bool
    {
        if (isset($params['serverhttpprefix']) && $params['serverhttpprefix'] !== '') {
            return strtolower((string) $params['serverhttpprefix']) === 'https';
        }
        $secure = $params['serversecure'] ?? false;
        return $secure === true || in_array(strtolower((string) $secure), ['on', '1', 'yes', 'true'], true);
    }

    /** WHMCS's own address + bridge_callback.php, the file installed in its web root. */
    private static function defaultCallbackUrl(array $params): string
    {
        $system = '';
        if (class_exists('\WHMCS\Config\Setting')) {
            $system = (string) \WHMCS\Config\Setting::getValue('SystemURL');
        }
        if ($system === '') {
            $system = (string) ($params['systemurl'] ?? '');
        }
        return $system === '' ? '' : rtrim($system, '/') . '/bridge_callback.php';
    }
}
