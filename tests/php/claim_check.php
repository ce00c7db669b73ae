<?php
/**
 * A callback id's claim in the WHMCS database when the insert fails for another
 * reason than the id being there already (a deadlock, a lost connection): that is
 * no duplicate, and must not be taken for one.
 */

require __DIR__ . '/capsule_standin.php';
require __DIR__ . '/../../hooks/whmcs/modules/servers/provisioningbridge/lib/Store.php';

use ProvisioningBridge\Store;
use WHMCS\Database\CapsuleRows;

$store = Store::open();
$outcome = function (callable $claim) {
    try {
        return $claim() ? 'claimed' : 'already there';
    } catch (\Exception $e) {
        return 'error';
    }
};
$first = $outcome(function () use ($store) {
    return $store->addIfAbsent('seen:a', ['timestamp' => '1'], 60);
});
CapsuleRows::$insertError = 'SQLSTATE[40001]: Serialization failure: 1213 Deadlock found when trying to get lock';
echo json_encode([
    'first' => $first,
    'present_while_failing' => $outcome(function () use ($store) {
        return $store->addIfAbsent('seen:a', ['timestamp' => '2'], 60);
    }),
    'absent_while_failing' => $outcome(function () use ($store) {
        return $store->addIfAbsent('seen:b', ['timestamp' => '1'], 60);
    }),
]);
