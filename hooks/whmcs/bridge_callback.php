<?php
/**
 * Receives the provisioning bridge's status callbacks (place this file in WHMCS's
 * web root, next to init.php, and give the bridge its URL as callback_url).
 *
 * Every request must carry a valid Standard Webhooks signature made with the
 * callback secret, from BRIDGE_CALLBACK_SECRET in the environment or 'secret' in
 * bridge_callback_config.php beside this file (comma-separated secrets allow
 * rotation). Anything unverified is answered 4xx and changes nothing:
 *   400 malformed (missing headers, not JSON)  401 wrong signature or stale timestamp
 *   409 the exact same signed message again (a replay)
 *
 * A verified callback, through WHMCS's local API:
 *   job.succeeded   UpdateClientProduct status=Active (only from Pending: never a service an
 *                   admin has suspended, terminated or cancelled since), activity log entry
 *   job.failed      activity log entry and a ticket for the staff; a later failure of
 *                   the same service adds a note to that ticket while it is open
 *   job.updated     activity log entry; when a deferred step (the certificate) gave up,
 *                   a ticket too, as for job.failed
 *   job.started, anything else   activity log entry
 *
 * A callback about an order the service replaced (sent again, changed, after it failed,
 * and stored by the bridge) that an admin retried in the bridge is logged, activates as
 * above, but opens no ticket, adds no note and sends no welcome e-mail.
 *
 * Handled webhook-ids are remembered (48 hours by default, longer than the bridge's
 * retry schedule). The bridge signs each delivery afresh, so the same id with a new
 * timestamp is its redelivery: answered 200 without doing anything again once handled,
 * 503 while another request is still handling it. After a 500 the redelivery does what
 * was left undone, never an effect twice (a second welcome e-mail, a second note).
 */

if (is_file(__DIR__ . '/init.php')) {
    require __DIR__ . '/init.php';
}

$pbLib = __DIR__ . '/modules/servers/provisioningbridge/lib';
require_once $pbLib . '/Signature.php';
require_once $pbLib . '/Store.php';
require_once $pbLib . '/Order.php';
require_once $pbLib . '/ServiceState.php';

use ProvisioningBridge\ServiceState;
use ProvisioningBridge\Signature;
use ProvisioningBridge\SignatureError;
use ProvisioningBridge\Store;

const PBCB_MAX_BODY = 262144;
/** A callback still marked as being handled after this long was left by a request that died: retake it. */
const PBCB_ABANDONED_S = 600;
// Handled ids are kept at least this long: the bridge redelivers a callback whose answer it
// did not get for up to about 27.6 hours, and a forgotten id would be handled twice.
const PBCB_MIN_REMEMBER_S = 28 * 3600;

function pbcb_config(): array
{
    $file = __DIR__ . '/bridge_callback_config.php';
    $config = is_file($file) ? require $file : [];
    $config = (is_array($config) ? $config : []) + [
        'secret' => '',
        'department_id' => 1,
        'ticket_name' => 'Provisioning Bridge',
        'ticket_email' => 'provisioning-bridge@example.invalid',
        'admin_user' => '',
        'welcome_email' => '',
        'bridge_url' => '',
        'remember_ids_s' => 48 * 3600,
        'state_dir' => null,
    ];
    $fromEnv = (string) getenv('BRIDGE_CALLBACK_SECRET');
    $secrets = $fromEnv !== '' ? $fromEnv : (string) $config['secret'];
    $config['secrets'] = array_values(array_filter(array_map('trim', explode(',', $secrets)), 'strlen'));
    return $config;
}

function pbcb_respond(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    header('Cache-Control: no-store');
    echo json_encode($body);
}

/** The webhook-* request headers, lower-case names. */
function pbcb_headers(): array
{
    $headers = [];
    foreach (['webhook-id', 'webhook-timestamp', 'webhook-signature'] as $name) {
        $headers[$name] = (string) ($_SERVER['HTTP_' . strtoupper(str_replace('-', '_', $name))] ?? '');
    }
    return $headers;
}

function pbcb_main(): void
{
    if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
        header('Allow: POST');
        pbcb_respond(405, ['error' => 'POST only']);
        return;
    }
    $config = pbcb_config();
    if (!$config['secrets']) {
        // Not the sender's fault: a 5xx makes the bridge retry once this is fixed.
        pbcb_respond(503, ['error' => 'the callback secret is not configured']);
        return;
    }
    $body = (string) file_get_contents('php://input', false, null, 0, PBCB_MAX_BODY + 1);
    if (strlen($body) > PBCB_MAX_BODY) {
        pbcb_respond(413, ['error' => 'body too large']);
        return;
    }
    $headers = pbcb_headers();
    try {
        $id = Signature::verify($config['secrets'], $headers, $body);
    } catch (SignatureError $e) {
        pbcb_respond($e->status, ['error' => $e->getMessage()]);
        return;
    } catch (\InvalidArgumentException $e) {
        pbcb_respond(503, ['error' => 'the configured callback secret is unusable: ' . $e->getMessage()]);
        return;
    }
    $event = json_decode($body, true);
    if (!is_array($event) || !is_string($event['type'] ?? null) || !is_array($event['data'] ?? null)) {
        pbcb_respond(400, ['error' => 'body: expected a JSON object with "type" and "data"']);
        return;
    }
    pbcb_process($config, $id, $headers['webhook-timestamp'], $event);
}

/**
 * Claims the id, handles the event, and marks it done; a redelivery after a failure does
 * only what the failed delivery had not done yet.
 *
 * The entry "seen:<sha256 of id>" holds the first delivery's timestamp (the same one again
 * is a replay), its state (handling, failed, done) and the effects already carried out.
 */
function pbcb_process(array $config, string $id, string $timestamp, array $event): void
{
    $ttl = max((int) $config['remember_ids_s'], PBCB_MIN_REMEMBER_S);
    $seenKey = 'seen:' . hash('sha256', $id);
    try {
        $store = Store::open($config['state_dir']);
        $verdict = pbcb_claim($store, $seenKey, $timestamp, $ttl);
    } catch (\Throwable $e) {
        error_log('bridge_callback: ' . $e->getMessage());
        pbcb_respond(500, ['error' => 'the callback could not be recorded; send it again']);
        return;
    }
    if ($verdict === 'replay') {
        pbcb_respond(409, ['error' => 'webhook-id already received with this timestamp: a replay']);
        return;
    }
    if ($verdict === 'done') {
        pbcb_respond(200, ['ok' => true, 'duplicate' => true]);
        return;
    }
    if ($verdict === 'busy') {
        // Not a 2xx: the first delivery may still fail, and the sender must then deliver again.
        header('Retry-After: 60');
        pbcb_respond(503, ['error' => 'webhook-id is still being handled; send it again later']);
        return;
    }
    $once = function (string $effect, callable $work) use ($store, $seenKey, $ttl): void {
        $seen = $store->get($seenKey) ?? [];
        if (in_array($effect, (array) ($seen['effects'] ?? []), true)) {
            return;
        }
        $work();
        $store->update($seenKey, function (?array $seen) use ($effect) {
            $seen = $seen ?? [];
            $seen['effects'] = array_merge((array) ($seen['effects'] ?? []), [$effect]);
            return $seen;
        }, $ttl);
    };
    try {
        pbcb_handle($config, $store, $event['type'], $event['data'], $once);
        $store->update($seenKey, function (?array $seen) {
            return ['state' => 'done'] + ($seen ?? []);
        }, $ttl);
    } catch (\Throwable $e) {
        error_log('bridge_callback: ' . $e->getMessage());
        try {
            $store->update($seenKey, function (?array $seen) {
                return ['state' => 'failed'] + ($seen ?? []);
            }, $ttl);
        } catch (\Throwable $ignored) {
            // Left "handling": a redelivery takes it over once PBCB_ABANDONED_S have passed.
        }
        pbcb_respond(500, ['error' => 'the callback could not be recorded; send it again']);
        return;
    }
    pbcb_respond(200, ['ok' => true, 'duplicate' => false]);
}

/**
 * "new" or "retake" (handle it), "done" (handled before), "busy" (another request is
 * handling it), or "replay" (the exact same message again).
 */
function pbcb_claim(Store $store, string $seenKey, string $timestamp, int $ttl): string
{
    $now = time();
    if ($store->addIfAbsent($seenKey, ['timestamp' => $timestamp, 'state' => 'handling', 'since' => $now], $ttl)) {
        return 'new';
    }
    $verdict = 'retake';
    $store->update($seenKey, function (?array $seen) use ($timestamp, $now, &$verdict) {
        if ($seen === null) {
            // Released meanwhile (expired or its handling failed): take it.
            return ['timestamp' => $timestamp, 'state' => 'handling', 'since' => $now];
        }
        $state = $seen['state'] ?? 'done';  // entries without a state were written once handled
        if (($seen['timestamp'] ?? null) === $timestamp) {
            $verdict = 'replay';
        } elseif ($state === 'done') {
            $verdict = 'done';
        } elseif ($state === 'handling' && $now - (int) ($seen['since'] ?? 0) < PBCB_ABANDONED_S) {
            $verdict = 'busy';
        } else {
            return ['state' => 'handling', 'since' => $now] + $seen;
        }
        return $seen;
    }, $ttl);
    return $verdict;
}

function pbcb_handle(array $config, Store $store, string $type, array $data, callable $once): void
{
    $serviceId = (string) ($data['service_id'] ?? '');
    if (!ctype_digit($serviceId)) {
        $once('log', function () use ($config, $type, $serviceId) {
            pbcb_api($config, 'LogActivity', ['description' => "Provisioning Bridge: $type for unknown service '$serviceId' ignored"]);
        });
        return;
    }
    pbcb_remember_status($store, $serviceId, $data);
    $current = pbcb_about_the_current_order($store, $serviceId, $data);
    $service = pbcb_service($config, $serviceId);
    if ($service === null) {
        // Deleted in WHMCS: a 5xx would only have the bridge send it again for a day.
        $once('log', function () use ($config, $type, $serviceId, $data) {
            pbcb_api($config, 'LogActivity', ['description' => "Provisioning Bridge: $type for service #$serviceId ignored: "
                . 'WHMCS has no such service (job ' . ($data['job_id'] ?? '?') . ')']);
        });
        return;
    }
    $summary = 'Provisioning Bridge: ' . $type . ' for service #' . $serviceId . pbcb_domain($service)
        . ' (job ' . ($data['job_id'] ?? '?') . ', status ' . ($data['status'] ?? '?') . ')';
    if (!$current) {
        // An order the service has since replaced (sent again, changed), retried in the bridge:
        // logged, but no ticket and no welcome e-mail for it.
        $summary .= '; an order of this service replaced since: no ticket, no e-mail';
    }
    if ($type === 'job.succeeded') {
        // Callbacks are retried for a day: one may arrive after an admin suspended, terminated
        // or cancelled the service, which a late success must not undo (nor e-mail about).
        $status = (string) ($service['status'] ?? '');
        $activate = $status === '' || in_array(strtolower($status), ['pending', 'active'], true);
        if ($activate) {
            $once('activate', function () use ($config, $serviceId) {
                pbcb_api($config, 'UpdateClientProduct', ['serviceid' => (int) $serviceId, 'status' => 'Active']);
            });
        } else {
            $summary .= "; not activated: the service is $status in WHMCS";
        }
        if (!empty($data['deferred'])) {
            $summary .= '; still retrying: ' . implode(', ', (array) $data['deferred']);
        }
        if ($current) {
            $once('ticket', function () use ($config, $store, $serviceId, $data) {
                pbcb_note_success($config, $store, $serviceId, $data);
            });
        }
        if ($activate && $current && $config['welcome_email'] !== '') {
            $once('welcome', function () use ($config, $serviceId) {
                pbcb_api($config, 'SendEmail', ['messagename' => $config['welcome_email'], 'id' => (int) $serviceId]);
            });
        }
    } elseif ($type === 'job.failed') {
        $summary .= ': ' . ($data['error'] ?? 'no error given');
        if ($current) {
            $once('ticket', function () use ($config, $store, $serviceId, $service, $data) {
                pbcb_ticket($config, $store, $serviceId, $service, $data, pbcb_failure_text($config, $serviceId, $data));
            });
        }
    } elseif ($type === 'job.updated' && ($gaveUp = pbcb_failed_step($data)) !== null) {
        // A deferred step (the certificate) gave up after the service went live: staff must
        // hear of it, not only the activity log.
        $summary .= ': ' . $gaveUp['kind'] . ' gave up: ' . ($gaveUp['error'] ?? 'no error given');
        if ($current) {
            $once('ticket', function () use ($config, $store, $serviceId, $service, $data, $gaveUp) {
                pbcb_ticket($config, $store, $serviceId, $service, $data, pbcb_gave_up_text($config, $serviceId, $data, $gaveUp));
            });
        }
    }
    $once('log', function () use ($config, $summary, $service) {
        pbcb_api($config, 'LogActivity', ['description' => $summary] + (isset($service['clientid']) ? ['userid' => (int) $service['clientid']] : []));
    });
}

/**
 * False for a callback about an order the service replaced: one the module started over from
 * (ServiceState 'replaced'), once the bridge stored the order that replaced it (the current
 * attempt has a job). Until then the replaced order is still the one in the bridge.
 */
function pbcb_about_the_current_order(Store $store, string $serviceId, array $data): bool
{
    $record = $store->get(ServiceState::key($serviceId));
    if (!$record || empty($record['job_id']) || !isset($data['event_id'])) {
        return true;
    }
    return !in_array($data['event_id'], (array) ($record['replaced'] ?? []), true);
}

/** Lets the module know how the current attempt ended (it starts over only after success or cancel). */
function pbcb_remember_status(Store $store, string $serviceId, array $data): void
{
    $record = $store->get(ServiceState::key($serviceId));
    if (!$record || empty($record['attempt_key']) || !isset($data['event_id'], $data['job_id'], $data['status'])) {
        return;
    }
    if ($data['event_id'] === ServiceState::webhookId($serviceId, $record['attempt_key'])) {
        ServiceState::recordJob($store, $serviceId, $record['attempt_key'], (string) $data['job_id'], (string) $data['status']);
    }
}

/**
 * Opens a ticket for a failed job, or adds a note to the service's ticket when one is
 * still open, so repeated failures of one service stay in one conversation.
 */
function pbcb_ticket(array $config, Store $store, string $serviceId, array $service, array $data, string $message): void
{
    $ticketId = pbcb_open_ticket_id($config, $store, $serviceId);
    if ($ticketId !== null) {
        pbcb_api($config, 'AddTicketNote', ['ticketid' => $ticketId, 'message' => $message, 'markdown' => true]);
        return;
    }
    $step = pbcb_failed_step($data);
    $subject = 'Provisioning failed: service #' . $serviceId . pbcb_domain($service)
        . ($step ? ' at ' . $step['kind'] : '');
    $result = pbcb_api($config, 'OpenTicket', [
        'deptid' => (int) $config['department_id'],
        'subject' => $subject,
        'message' => $message,
        'name' => $config['ticket_name'],
        'email' => $config['ticket_email'],
        'priority' => 'High',
        'markdown' => true,
        // The ticket is for staff: no auto-reply to the placeholder sender.
        'noemail' => true,
    ]);
    $store->put('ticket:' . $serviceId, ['ticket_id' => (int) $result['id']]);
}

/** The remembered ticket of the service if it still exists and is not closed. */
function pbcb_open_ticket_id(array $config, Store $store, string $serviceId): ?int
{
    $known = $store->get('ticket:' . $serviceId);
    if (!$known || empty($known['ticket_id'])) {
        return null;
    }
    try {
        $ticket = pbcb_api($config, 'GetTicket', ['ticketid' => (int) $known['ticket_id']]);
    } catch (\RuntimeException $e) {
        return null;  // deleted meanwhile: open a new one
    }
    return strcasecmp((string) ($ticket['status'] ?? ''), 'Closed') === 0 ? null : (int) $known['ticket_id'];
}

function pbcb_note_success(array $config, Store $store, string $serviceId, array $data): void
{
    $ticketId = pbcb_open_ticket_id($config, $store, $serviceId);
    if ($ticketId !== null) {
        $text = 'Provisioning of service #' . $serviceId . ' has now succeeded (job ' . ($data['job_id'] ?? '?') . ').';
        pbcb_api($config, 'AddTicketNote', ['ticketid' => $ticketId, 'message' => $text, 'markdown' => true]);
    }
}

function pbcb_failed_step(array $data): ?array
{
    foreach ((array) ($data['steps'] ?? []) as $step) {
        if (($step['status'] ?? '') === 'failed') {
            return $step;
        }
    }
    return null;
}

/** The ticket text: the bridge's error, the failed step, and what would undo the steps that took effect. */
function pbcb_failure_text(array $config, string $serviceId, array $data): string
{
    $lines = ['Provisioning of service #' . $serviceId . ' failed (job ' . ($data['job_id'] ?? '?') . ').', ''];
    $lines[] = 'Error: ' . ($data['error'] ?? 'none given');
    $step = pbcb_failed_step($data);
    if ($step) {
        $lines[] = 'Failed step: ' . $step['kind'] . ' after ' . ($step['attempts'] ?? '?') . ' attempt(s): ' . ($step['error'] ?? '');
    }
    $compensations = (array) ($data['compensations'] ?? []);
    if ($compensations) {
        $lines[] = '';
        $lines[] = 'Already done on the panel (undo only if the order is abandoned):';
        foreach ($compensations as $c) {
            $lines[] = '- ' . ($c['action'] ?? '?') . ' [' . ($c['status'] ?? '?') . ']';
        }
    }
    $lines[] = '';
    $lines[] = 'Fix the cause, then press "Retry provisioning" on the service; finished steps are not repeated,'
        . ' except those whose undo above was resolved "done" in the bridge.';
    if ($config['bridge_url'] !== '' && isset($data['job_id'])) {
        $lines[] = 'Job in the bridge: ' . rtrim($config['bridge_url'], '/') . '/admin/jobs/' . rawurlencode($data['job_id']);
    }
    return implode("\n", $lines);
}

/** The ticket text when a step deferred past the job's success (the certificate) gave up. */
function pbcb_gave_up_text(array $config, string $serviceId, array $data, array $step): string
{
    $lines = [
        'Service #' . $serviceId . ' is active, but its ' . $step['kind'] . ' step gave up after '
            . ($step['attempts'] ?? '?') . ' attempt(s) (job ' . ($data['job_id'] ?? '?') . '):',
        '',
        (string) ($step['error'] ?? 'no error given'),
        '',
        'For a certificate: the site keeps the self-signed one until it is issued. Check that the'
            . " domain's DNS points at the server, then issue it on the panel.",
    ];
    if ($config['bridge_url'] !== '' && isset($data['job_id'])) {
        $lines[] = 'Job in the bridge: ' . rtrim($config['bridge_url'], '/') . '/admin/jobs/' . rawurlencode($data['job_id']);
    }
    return implode("\n", $lines);
}

/**
 * The WHMCS service (domain, client, status): empty when it cannot be read, null when WHMCS
 * answers that it has no such service.
 */
function pbcb_service(array $config, string $serviceId): ?array
{
    try {
        $result = pbcb_api($config, 'GetClientsProducts', ['serviceid' => (int) $serviceId]);
    } catch (\RuntimeException $e) {
        return [];
    }
    if (isset($result['totalresults']) && (int) $result['totalresults'] === 0) {
        return null;
    }
    $product = $result['products']['product'][0] ?? [];
    return is_array($product) ? $product : [];
}

function pbcb_domain(array $service): string
{
    return empty($service['domain']) ? '' : ' (' . $service['domain'] . ')';
}

/** localAPI, with an error when WHMCS says it did not work. */
function pbcb_api(array $config, string $command, array $values): array
{
    $result = $config['admin_user'] !== '' ? localAPI($command, $values, $config['admin_user']) : localAPI($command, $values);
    if (!is_array($result) || ($result['result'] ?? '') !== 'success') {
        $message = is_array($result) ? ($result['message'] ?? 'no message') : 'no answer';
        throw new \RuntimeException("$command failed: $message");
    }
    return $result;
}

pbcb_main();
