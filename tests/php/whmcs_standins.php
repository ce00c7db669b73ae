<?php
/**
 * Stand-ins for the parts of WHMCS the module and the callback receiver use.
 *
 * Everything they are asked to do is appended to JSON-lines files in
 * WHMCS_STANDIN_DIR, for the tests to read:
 *   module_log.jsonl   logModuleCall entries, after the $replaceVars masking WHMCS applies
 *   localapi.jsonl     localAPI calls: {"command", "values", "adminuser"}
 * Knobs in the same directory: settings.json (WHMCS\Config\Setting values),
 * products.json (what GetClientsProducts answers), localapi_fail.json (command
 * names that fail once each), localapi_slow.json (command name => seconds it takes),
 * tickets.json (the tickets OpenTicket made; a test may set a status to "Closed"),
 * module_log_barrier.json (action => count: a logModuleCall of that action returns only
 * once module_log.jsonl holds that many entries of it, so concurrent calls meet there).
 */

namespace WHMCS\Config {
    class Setting
    {
        public static function getValue($name)
        {
            $settings = \whmcs_standin_read('settings.json', []);
            return $settings[$name] ?? '';
        }
    }
}

namespace {
    if (!defined('WHMCS')) {
        define('WHMCS', true);
    }

    function whmcs_standin_dir(): string
    {
        $dir = getenv('WHMCS_STANDIN_DIR');
        if (!$dir) {
            throw new RuntimeException('WHMCS_STANDIN_DIR is not set');
        }
        return $dir;
    }

    function whmcs_standin_read(string $name, $default)
    {
        $text = @file_get_contents(whmcs_standin_dir() . '/' . $name);
        return $text === false ? $default : json_decode($text, true);
    }

    function whmcs_standin_write(string $name, $value): void
    {
        file_put_contents(whmcs_standin_dir() . '/' . $name, json_encode($value), LOCK_EX);
    }

    function whmcs_standin_append(string $name, array $record): void
    {
        file_put_contents(whmcs_standin_dir() . '/' . $name, json_encode($record) . "\n", FILE_APPEND | LOCK_EX);
    }

    /** As WHMCS stores it: arrays made text, then every $replaceVars value starred out. */
    function logModuleCall($module, $action, $request, $response, $processed = '', $replaceVars = [])
    {
        $text = function ($value) use ($replaceVars) {
            $string = is_array($value) || is_object($value) ? print_r($value, true) : (string) $value;
            foreach ((array) $replaceVars as $secret) {
                if ((string) $secret !== '') {
                    $string = str_replace((string) $secret, str_repeat('*', strlen((string) $secret)), $string);
                }
            }
            return $string;
        };
        whmcs_standin_append('module_log.jsonl', [
            'module' => $module,
            'action' => $action,
            'request' => $text($request),
            'response' => $text($response),
            'processed' => $text($processed),
        ]);
        $barrier = whmcs_standin_read('module_log_barrier.json', []);
        if (isset($barrier[$action])) {
            whmcs_standin_wait_for_entries((string) $action, (int) $barrier[$action]);
        }
    }

    /** Waits (10 s at most, then goes on and lets the test fail) for $count module log entries of $action. */
    function whmcs_standin_wait_for_entries(string $action, int $count): void
    {
        $deadline = microtime(true) + 10;
        while (microtime(true) < $deadline) {
            $lines = @file(whmcs_standin_dir() . '/module_log.jsonl', FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [];
            $seen = 0;
            foreach ($lines as $line) {
                $seen += (json_decode($line, true)['action'] ?? null) === $action ? 1 : 0;
            }
            if ($seen >= $count) {
                return;
            }
            usleep(20000);
        }
    }

    function localAPI($command, $values = [], $adminUser = '')
    {
        whmcs_standin_append('localapi.jsonl', ['command' => $command, 'values' => $values, 'adminuser' => $adminUser]);
        $slow = whmcs_standin_read('localapi_slow.json', []);
        if (isset($slow[$command])) {
            usleep((int) ($slow[$command] * 1000000));
        }
        $failing = whmcs_standin_read('localapi_fail.json', []);
        if (in_array($command, $failing, true)) {
            whmcs_standin_write('localapi_fail.json', array_values(array_diff($failing, [$command])));
            return ['result' => 'error', 'message' => "$command is failing on purpose"];
        }
        $tickets = whmcs_standin_read('tickets.json', []);
        switch ($command) {
            case 'OpenTicket':
                $id = count($tickets) + 1;
                $tickets[(string) $id] = ['status' => 'Open', 'subject' => $values['subject'] ?? ''];
                whmcs_standin_write('tickets.json', $tickets);
                return ['result' => 'success', 'id' => $id, 'tid' => 'PB-' . $id];
            case 'GetTicket':
            case 'AddTicketNote':
                $ticket = $tickets[(string) ($values['ticketid'] ?? '')] ?? null;
                if ($ticket === null) {
                    return ['result' => 'error', 'message' => 'Ticket ID Not Found'];
                }
                return ['result' => 'success', 'ticketid' => $values['ticketid'], 'status' => $ticket['status']];
            case 'GetClientsProducts':
                $products = whmcs_standin_read('products.json', null)
                    ?? [['id' => $values['serviceid'] ?? 0, 'clientid' => 1, 'domain' => 'example.com']];
                return ['result' => 'success', 'totalresults' => count($products), 'products' => ['product' => $products]];
            default:
                return ['result' => 'success'];
        }
    }
}
