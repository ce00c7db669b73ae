<?php
/**
 * The file store when state.json is there but cannot be read or parsed (the test breaks
 * it before running this): every operation must fail rather than take the state for
 * empty, and no write may replace the file with the one entry it changes.
 */

require __DIR__ . '/../../hooks/whmcs/modules/servers/provisioningbridge/lib/Store.php';

use ProvisioningBridge\Store;

$dir = getenv('PROVISIONINGBRIDGE_STATE_DIR');
$store = Store::open();
$operations = [
    'get' => function () use ($store) {
        return $store->get('service:7');
    },
    'put' => function () use ($store) {
        $store->put('service:8', ['attempt_key' => 'k8']);
    },
    'update' => function () use ($store) {
        return $store->update('service:7', function (?array $record) {
            return ['attempt_key' => 'new'] + ($record ?? []);
        });
    },
    'add_if_absent' => function () use ($store) {
        return $store->addIfAbsent('seen:b', ['timestamp' => '1'], 60);
    },
    'delete' => function () use ($store) {
        $store->delete('service:7');
    },
];
$outcomes = [];
foreach ($operations as $name => $operation) {
    try {
        $operation();
        $outcomes[$name] = 'done';
    } catch (\RuntimeException $e) {
        $outcomes[$name] = 'error: ' . $e->getMessage();
    }
}
echo json_encode([
    'outcomes' => $outcomes,
    'files' => array_values(array_diff(scandir($dir), ['.', '..'])),
]);
