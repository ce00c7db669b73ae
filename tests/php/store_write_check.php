<?php
/**
 * The file store when a write cannot be completed: the test runs this with a limit on
 * the size of any file the process writes (a disk that fills up part-way through).
 * One small entry fits; a large one does not.
 */

require __DIR__ . '/../../hooks/whmcs/modules/servers/provisioningbridge/lib/Store.php';

use ProvisioningBridge\Store;

$dir = getenv('PROVISIONINGBRIDGE_STATE_DIR');
$store = Store::open();
$store->put('service:7', ['attempt_key' => 'k1']);
try {
    $store->put('service:8', ['padding' => str_repeat('x', 100000)]);
    $large = 'stored';
} catch (\RuntimeException $e) {
    $large = 'error: ' . $e->getMessage();
}
echo json_encode([
    'large' => $large,
    'kept' => $store->get('service:7'),
    'large_visible' => $store->get('service:8') !== null,
    'files' => array_values(array_diff(scandir($dir), ['.', '..'])),
]);
