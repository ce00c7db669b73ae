<?php
/**
 * Provisioning Bridge: a WHMCS server module that hands orders to the provisioning
 * bridge instead of calling the hosting panel itself.
 *
 * CreateAccount only sends a signed service.create event and returns as soon as
 * the bridge has stored it; the bridge does the panel work, retries, and reports
 * back to bridge_callback.php (job succeeded: service made Active; job failed: a
 * ticket for the staff). The admin buttons use the bridge's admin API.
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

require_once __DIR__ . '/lib/Signature.php';
require_once __DIR__ . '/lib/Store.php';
require_once __DIR__ . '/lib/Settings.php';
require_once __DIR__ . '/lib/BridgeClient.php';
require_once __DIR__ . '/lib/Order.php';
require_once __DIR__ . '/lib/ServiceState.php';

use ProvisioningBridge\BridgeClient;
use ProvisioningBridge\BridgeResponse;
use ProvisioningBridge\Order;
use ProvisioningBridge\OrderError;
use ProvisioningBridge\ServiceState;
use ProvisioningBridge\Settings;
use ProvisioningBridge\Store;

function provisioningbridge_MetaData()
{
    return [
        'DisplayName' => 'Provisioning Bridge',
        'APIVersion' => '1.1',
        'RequiresServer' => true,
    ];
}

function provisioningbridge_ConfigOptions()
{
    return [
        'Panel' => [
            'Type' => 'text',
            'Size' => '25',
            'Default' => 'default',
            'Description' => 'Name of the panel server in the bridge\'s BRIDGE_PANELS',
        ],
        'PHP version' => [
            'Type' => 'dropdown',
            'Options' => '7.4,8.0,8.1,8.2,8.3,8.4',
            'Default' => '8.2',
        ],
        'SSL' => [
            'Type' => 'yesno',
            'Default' => 'yes',
            'Description' => 'Issue a certificate (deferred until DNS points at the server)',
        ],
        'Databases' => [
            'Type' => 'textarea',
            'Rows' => '3',
            'Cols' => '50',
            'Description' => 'One per line: "name user" (the panel adds the account prefix). Passwords are generated.',
        ],
        'Cron jobs' => [
            'Type' => 'textarea',
            'Rows' => '3',
            'Cols' => '50',
            'Description' => 'One per line: minute hour day month weekday command',
        ],
    ];
}

/**
 * Sends the order. "success" means the bridge has durably stored it (202), or already
 * had it (200, the same attempt sent again); the result arrives later by callback.
 */
function provisioningbridge_CreateAccount(array $params)
{
    try {
        $settings = Settings::fromParams($params);
        if ($problems = $settings->problems()) {
            return 'Provisioning Bridge is not configured: ' . implode('; ', $problems);
        }
        $databases = Order::parseDatabases((string) ($params['configoption4'] ?? ''));
        $cronJobs = Order::parseCronJobs((string) ($params['configoption5'] ?? ''));
        $serviceId = (string) $params['serviceid'];
        $store = Store::open();
        $client = new BridgeClient($settings, [(string) ($params['password'] ?? '')]);

        $previous = $store->get(ServiceState::key($serviceId)) ?? [];
        $previousStatus = provisioningbridge_jobStatus($client, $previous);
        $finishedKey = in_array($previousStatus, ServiceState::FINISHED_FOR_GOOD, true) ? $previous['attempt_key'] : null;
        // A failed order changed since (another domain, say, where the first was taken) is a new
        // order; sent unchanged it is the same one, which only the Retry button resumes.
        $failedKey = $previousStatus === 'failed' ? $previous['attempt_key'] : null;
        $digest = Order::digest($params, $databases, $cronJobs);
        $record = ServiceState::nextAttempt($store, $serviceId, $databases, $finishedKey, $failedKey, $digest);
        if ($record['attempt_key'] !== ($previous['attempt_key'] ?? null)) {
            // A new attempt (this click's or a simultaneous one's): the status read is the old job's.
            $previousStatus = null;
        }

        $passwords = ServiceState::passwords($record);
        $client = new BridgeClient($settings, array_merge([(string) ($params['password'] ?? '')], array_values($passwords)));
        $event = Order::serviceCreate($params, $databases, $passwords, $cronJobs, $settings->callbackUrl, $record['replaces'] ?? null);
        $webhookId = ServiceState::webhookId($serviceId, $record['attempt_key']);
        $response = $client->sendEvent('CreateAccount', $webhookId, $event);
        return provisioningbridge_createResult($store, $serviceId, $record, $response, $previousStatus);
    } catch (OrderError $e) {
        return $e->getMessage();
    } catch (\Throwable $e) {
        return 'Provisioning Bridge: ' . $e->getMessage();
    }
}

/** The status of the service's current job: from the admin API if possible, else as the callbacks reported it. */
function provisioningbridge_jobStatus(BridgeClient $client, array $record): ?string
{
    if (empty($record['job_id'])) {
        return $record['job_status'] ?? null;
    }
    $response = $client->admin('JobStatus', 'GET', '/admin/api/jobs/' . rawurlencode($record['job_id']));
    if ($response->ok() && isset($response->json['status'])) {
        return (string) $response->json['status'];
    }
    return $record['job_status'] ?? null;
}

/** $previousStatus: the status of this attempt's job as read before sending, null if unknown. */
function provisioningbridge_createResult(Store $store, string $serviceId, array $record, BridgeResponse $response, ?string $previousStatus)
{
    if (!in_array($response->status, [200, 202], true)) {
        return 'The bridge did not accept the order: ' . $response->errorText();
    }
    $jobId = (string) ($response->json['job_id'] ?? '');
    $duplicate = !empty($response->json['duplicate']);
    $jobStatus = 'accepted';
    if ($duplicate) {
        // The answer says where the job it found is now (a bridge too old to say leaves the status read before).
        $jobStatus = isset($response->json['job_status']) ? (string) $response->json['job_status'] : $previousStatus;
    }
    ServiceState::recordJob($store, $serviceId, $record['attempt_key'], $jobId, (string) $jobStatus);
    if ($duplicate && $jobStatus === 'failed') {
        // Sending the same event again cannot restart a failed job; say what can.
        return "The bridge already has this order (job $jobId) and it failed. Fix the cause, then press \"Retry provisioning\".";
    }
    return 'success';
}

function provisioningbridge_TestConnection(array $params)
{
    $settings = Settings::fromParams($params);
    if ($problems = $settings->problems()) {
        return ['success' => false, 'error' => implode('; ', $problems)];
    }
    $client = new BridgeClient($settings);
    $ready = $client->plain('TestConnection', 'GET', '/readyz');
    if (!$ready->ok()) {
        return ['success' => false, 'error' => 'The bridge is not ready: ' . $ready->errorText()];
    }
    // A signed event of no known type: the bridge checks the signature first (401 if the
    // secret is wrong), then refuses the type (422) and stores nothing.
    $probe = $client->sendEvent('TestConnection', 'whmcs-connection-test-' . bin2hex(random_bytes(6)), ['type' => 'connection.test']);
    if ($probe->status === 401) {
        return ['success' => false, 'error' => 'The bridge rejected the webhook_secret: ' . $probe->errorText()];
    }
    if ($probe->status !== 422) {
        return ['success' => false, 'error' => 'Unexpected answer to a signed test event: ' . $probe->errorText()];
    }
    $admin = $client->admin('TestConnection', 'GET', '/admin/api/jobs?limit=1');
    if (in_array($admin->status, [401, 403], true)) {
        return ['success' => false, 'error' => 'The bridge rejected the admin_token: ' . $admin->errorText()];
    }
    if (!$admin->ok()) {
        return ['success' => false, 'error' => 'The admin API did not answer: ' . $admin->errorText()];
    }
    return ['success' => true, 'error' => ''];
}

function provisioningbridge_AdminCustomButtonArray()
{
    return [
        'Retry provisioning' => 'RetryProvisioning',
        'Refresh status' => 'RefreshStatus',
    ];
}

/**
 * Resumes the service's last failed job from its first unfinished step; steps that
 * already took effect are not repeated. The service's current username and password
 * go along, so correcting them in WHMCS before retrying fixes a credentials failure.
 */
function provisioningbridge_RetryProvisioning(array $params)
{
    try {
        $client = new BridgeClient(Settings::fromParams($params), [(string) ($params['password'] ?? '')]);
        // The latest job only: an older failed one was left behind by a changed order.
        $query = http_build_query(['service_id' => (string) $params['serviceid'], 'limit' => 1]);
        $list = $client->admin('RetryProvisioning', 'GET', '/admin/api/jobs?' . $query);
        if (!$list->ok()) {
            return 'Could not look up the service\'s jobs: ' . $list->errorText();
        }
        $job = $list->json['jobs'][0] ?? null;
        if (!$job) {
            return 'There is no failed provisioning job for this service.';
        }
        if (($job['status'] ?? '') !== 'failed') {
            return 'There is no failed provisioning job for this service: its latest job, ' . $job['job_id']
                . ', is ' . ($job['status'] ?? 'unknown') . '.';
        }
        $body = null;
        if ((string) ($params['username'] ?? '') !== '' && (string) ($params['password'] ?? '') !== '') {
            $body = ['account' => ['username' => (string) $params['username'], 'password' => (string) $params['password']]];
        }
        $retry = $client->admin('RetryProvisioning', 'POST', '/admin/api/jobs/' . rawurlencode($job['job_id']) . '/retry', $body);
        if ($retry->status === 409) {
            return 'Job ' . $job['job_id'] . ' is no longer failed, so there is nothing to retry: ' . $retry->errorText();
        }
        return $retry->ok() ? 'success' : 'The bridge refused the retry: ' . $retry->errorText();
    } catch (\Throwable $e) {
        return 'Provisioning Bridge: ' . $e->getMessage();
    }
}

/** Nothing to do: the services tab loads the job's current status each time it is shown. */
function provisioningbridge_RefreshStatus(array $params)
{
    return 'success';
}

/** The service's latest job, as fields of the admin's Products/Services tab. */
function provisioningbridge_AdminServicesTabFields(array $params)
{
    $h = function ($value) {
        return htmlspecialchars((string) $value, ENT_QUOTES, 'UTF-8');
    };
    try {
        $settings = Settings::fromParams($params);
        $client = new BridgeClient($settings);
        $query = http_build_query(['service_id' => (string) $params['serviceid'], 'limit' => 1]);
        $list = $client->admin('ServiceStatus', 'GET', '/admin/api/jobs?' . $query);
        if (!$list->ok()) {
            return ['Provisioning' => 'Could not load the status from the bridge: ' . $h($list->errorText())];
        }
        $job = $list->json['jobs'][0] ?? null;
        if ($job) {
            // List entries are summaries; the job itself carries the steps and compensations.
            $detail = $client->admin('ServiceStatus', 'GET', '/admin/api/jobs/' . rawurlencode((string) $job['job_id']));
            $job = $detail->ok() && is_array($detail->json) ? $detail->json : $job;
        }
        $fields = $job ? provisioningbridge_jobFields($settings, $job, $h) : ['Provisioning' => 'No job in the bridge for this service yet.'];
        try {
            $record = Store::open()->get(ServiceState::key((string) $params['serviceid'])) ?? [];
        } catch (\Throwable $e) {
            // The bridge's view of the job is shown all the same.
            $fields['Database passwords'] = 'Could not be read: ' . $h($e->getMessage());
            return $fields;
        }
        $databases = [];
        foreach (ServiceState::passwords($record) as $name => $password) {
            $databases[] = $h($name) . ': <code>' . $h($password) . '</code>';
        }
        if ($databases) {
            $fields['Database passwords'] = implode('<br>', $databases);
        }
        return $fields;
    } catch (\Throwable $e) {
        return ['Provisioning' => 'Could not load the status: ' . $h($e->getMessage())];
    }
}

function provisioningbridge_jobFields(Settings $settings, array $job, callable $h)
{
    $link = $settings->baseUrl . '/admin/jobs/' . rawurlencode((string) $job['job_id']);
    $fields = [
        'Provisioning job' => '<a href="' . $h($link) . '" target="_blank" rel="noopener">' . $h($job['job_id']) . '</a> '
            . '<strong>' . $h($job['status'] ?? '') . '</strong>',
    ];
    $rows = '';
    foreach ($job['steps'] ?? [] as $step) {
        $rows .= '<tr><td>' . $h($step['kind'] ?? '') . '</td><td>' . $h($step['status'] ?? '') . '</td><td>'
            . $h($step['attempts'] ?? 0) . '</td><td>' . $h($step['error'] ?? '') . '</td></tr>';
    }
    $fields['Steps'] = '<table class="table table-condensed"><tr><th>Step</th><th>Status</th><th>Attempts</th><th>Error</th></tr>'
        . $rows . '</table>';
    if (!empty($job['error'])) {
        $fields['Error'] = $h($job['error']);
    }
    if (!empty($job['deferred'])) {
        $fields['Deferred'] = $h(implode(', ', (array) $job['deferred'])) . ' (retried on its own schedule)';
    }
    $pending = [];
    foreach ($job['compensations'] ?? [] as $compensation) {
        if (($compensation['status'] ?? '') === 'pending') {
            $pending[] = $h($compensation['action'] ?? '');
        }
    }
    if ($pending) {
        $fields['To undo'] = implode('<br>', $pending);
    }
    return $fields;
}

/** The client area shows the databases with the passwords the module generated. */
function provisioningbridge_ClientArea(array $params)
{
    try {
        $record = Store::open()->get(ServiceState::key((string) $params['serviceid'])) ?? [];
    } catch (\Throwable $e) {
        // The customer sees that the details are missing, not why: the reason names server paths.
        if (function_exists('logModuleCall')) {
            logModuleCall('provisioningbridge', 'ClientArea', ['serviceid' => $params['serviceid']], $e->getMessage(), '', []);
        }
        return [
            'templatefile' => 'templates/clientarea',
            'vars' => ['pbDatabases' => [], 'pbUnavailable' => true],
        ];
    }
    $databases = [];
    $prefix = (string) ($params['username'] ?? '');
    foreach (Order::parseDatabases((string) ($params['configoption4'] ?? '')) as $database) {
        $databases[] = [
            'name' => $prefix . '_' . $database['name'],
            'user' => $prefix . '_' . $database['user'],
            'password' => ServiceState::passwords($record)[$database['name']] ?? '',
        ];
    }
    return [
        'templatefile' => 'templates/clientarea',
        'vars' => ['pbDatabases' => $databases],
    ];
}
