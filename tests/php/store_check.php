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

// After a failure: the same order keeps its attempt, a changed one starts over, and so does
// one whose record (kept by an earlier version of the module) has no digest to compare.
$failed = ServiceState::nextAttempt($store, '8', $dbs, null, null, 'digest-a');
$sameAfterFailure = ServiceState::nextAttempt($store, '8', $dbs, null, $failed['attempt_key'], 'digest-a');
$changedAfterFailure = ServiceState::nextAttempt($store, '8', $dbs, null, $failed['attempt_key'], 'digest-b');
$clickedAgain = ServiceState::nextAttempt($store, '8', $dbs, null, null, 'digest-b');
$afterSuccess = ServiceState::nextAttempt($store, '8', $dbs, $changedAfterFailure['attempt_key'], null, 'digest-b');
$store->put(ServiceState::key('9'), ['attempt_key' => 'oldkey'], 3600);
$noDigestAfterFailure = ServiceState::nextAttempt($store, '9', $dbs, null, 'oldkey', 'digest-a');

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
    'same_order_after_failure_same_key' => $sameAfterFailure['attempt_key'] === $failed['attempt_key'],
    'changed_order_after_failure_new_key' => $changedAfterFailure['attempt_key'] !== $failed['attempt_key']
        && $changedAfterFailure['order_digest'] === 'digest-b',
    'no_digest_after_failure_new_key' => $noDigestAfterFailure['attempt_key'] !== 'oldkey',
    'changed_order_names_what_it_replaces' => ($changedAfterFailure['replaces'] ?? null)
        === ServiceState::webhookId('8', $failed['attempt_key']),
    'clicked_again_still_names_it' => ($clickedAgain['replaces'] ?? null) === $changedAfterFailure['replaces'],
    'a_new_order_after_success_replaces_nothing' => !isset($afterSuccess['replaces'])
        && $afterSuccess['attempt_key'] !== $changedAfterFailure['attempt_key'],
    'replaced_ids_are_remembered' => ($afterSuccess['replaced'] ?? null) === [$changedAfterFailure['replaces']],
    'claims' => $claims,
    'expired_is_gone' => $store->get('seen:expired') === null,
    'deleted_is_gone' => $store->get('seen:a') === null,
]);
