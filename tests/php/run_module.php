<?php
/**
 * Calls one function of the server module as WHMCS would.
 *
 * stdin: {"function": "CreateAccount", "params": {...}}; stdout: {"result": ...}.
 * "raw_params" (name => base64) adds params whose bytes JSON cannot carry (not UTF-8).
 */

require __DIR__ . '/whmcs_standins.php';
require __DIR__ . '/../../hooks/whmcs/modules/servers/provisioningbridge/provisioningbridge.php';

$input = json_decode(stream_get_contents(STDIN), true);
$function = 'provisioningbridge_' . $input['function'];
foreach ($input['raw_params'] ?? [] as $name => $encoded) {
    $input['params'][$name] = base64_decode($encoded);
}
$result = isset($input['params']) ? $function($input['params']) : $function();
echo json_encode(['result' => $result]);
