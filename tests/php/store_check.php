<?php
/**
 * Runs the same scenario against one of the module's stores and prints what it saw.
 *
 * argv[1]: "capsule" (the WHMCS database path, through the Capsule stand-in) or "file".
 */

if ($argv[1] === 'capsule') {
    require __DIR__ . '/capsule_standin.php';
}
$lib = __DIR__ . '/../../hooks/whmcs/modules/servers/provisioningbridge/lib';
require $lib . '/Store.php';
require $lib . '/Order.php';
require $lib . '/ServiceState.php';

use ProvisioningBridge\ServiceState;
use ProvisioningBridge\Store;

$store = Store::open();
$dbs = [['name' => 'wp', 'user' => 'wpuser']];
$first = ServiceState::nextAttempt($store, '7', $dbs, null);
$repeat = ServiceState::nextAttempt($store, '7', $dbs + [1 => ['name' => 'shop', 'user' => 'shopuser']], null);
ServiceState::recordJob($store, '7', $first['attempt_key'], 'job_1', 'succeeded');
$afterJob = $store->get(ServiceState::key('7'));
$startOver = ServiceState::nextAttempt($store, '7', $dbs, $first['attempt_key']);
$staleStartOver = ServiceState::nextAttempt($store, '7', $dbs, $first['attempt_key']);

$claims = [$store->addIfAbsent('seen:a', ['timestamp' => '1'], 60), $store->addIfAbsent('seen:a', ['timestamp' => '2'], 60)];
$store->put('seen:expired', ['x' => 1], -1);
$store->delete('seen:a');

echo json_encode([
    'class' => get_class($store),
    'same_key_when_repeated' => $first['attempt_key'] === $repeat['attempt_key'],
    'wp_password_kept' => ServiceState::passwords($first)['wp'] === ServiceState::passwords($repeat)['wp'],
    'passwords_after_repeat' => array_keys(ServiceState::passwords($repeat)),
    'job_recorded' => [$afterJob['job_id'], $afterJob['job_status']],
    'new_key_after_success' => $startOver['attempt_key'] !== $first['attempt_key'],
    'second_click_keeps_new_key' => $staleStartOver['attempt_key'] === $startOver['attempt_key'],
    'passwords_survive_new_attempt' => ServiceState::passwords($startOver) === ServiceState::passwords($repeat),
    'claims' => $claims,
    'expired_is_gone' => $store->get('seen:expired') === null,
    'deleted_is_gone' => $store->get('seen:a') === null,
]);
