<?php
/**
 * What the module remembers per service (store key "service:<serviceid>"):
 *
 *   attempt_key   makes the webhook-id "whmcs-<serviceid>-<attempt_key>". Kept, so a
 *                 repeated CreateAccount is the same event to the bridge (a duplicate,
 *                 never a second job); replaced only to start over (see nextAttempt).
 *   db_passwords  database name => password, generated once and kept across attempts,
 *                 so a database the panel already has keeps the password shown to the
 *                 customer. Encrypted with WHMCS's encrypt() when available.
 *   job_id, job_status  the bridge's job for the current attempt, as last reported.
 *   order_digest  Order::digest of the order the current attempt sent.
 *   replaces      the webhook-id of the failed attempt the current one replaces (its order
 *                 changed since), sent with the order so the bridge leaves that one be.
 *   replaced      every webhook-id the service started over from that way (the last 20):
 *                 the callback receiver opens no tickets for those.
 */

namespace ProvisioningBridge;

final class ServiceState
{
    /** Job statuses after which a new CreateAccount means "provision again", not "repeat". */
    const FINISHED_FOR_GOOD = ['succeeded', 'cancelled'];

    public static function key(string $serviceId): string
    {
        return 'service:' . $serviceId;
    }

    public static function webhookId(string $serviceId, string $attemptKey): string
    {
        return 'whmcs-' . $serviceId . '-' . $attemptKey;
    }

    /**
     * The record for this CreateAccount: the same attempt key as before unless the
     * previous job (with key $finishedKey) is known to be succeeded or cancelled, or it
     * (with key $failedKey) failed and the order ($orderDigest) has changed since; and a
     * password for every database in $databases.
     */
    public static function nextAttempt(
        Store $store,
        string $serviceId,
        array $databases,
        ?string $finishedKey,
        ?string $failedKey = null,
        string $orderDigest = ''
    ): array {
        return $store->update(self::key($serviceId), function (?array $record) use ($serviceId, $databases, $finishedKey, $failedKey, $orderDigest) {
            $record = $record ?? [];
            $key = $record['attempt_key'] ?? null;
            // Compare keys under the lock: two simultaneous clicks start over only once.
            // A record an earlier version of the module kept has no digest: what it sent is not
            // known, so after a failure the order counts as changed. (At worst a new job for the
            // same order, which takes over what the failed one made.)
            $changedAfterFailure = $failedKey !== null && $key === $failedKey
                && ($record['order_digest'] ?? null) !== $orderDigest;
            if (empty($key) || ($finishedKey !== null && $key === $finishedKey) || $changedAfterFailure) {
                $record['attempt_key'] = bin2hex(random_bytes(6));
                unset($record['job_id'], $record['job_status'], $record['replaces']);
                $record['order_digest'] = $orderDigest;
                if ($changedAfterFailure) {
                    $record['replaces'] = self::webhookId($serviceId, (string) $key);
                    $replaced = array_merge((array) ($record['replaced'] ?? []), [$record['replaces']]);
                    $record['replaced'] = array_slice($replaced, -20);
                }
            } elseif (!isset($record['order_digest'])) {
                $record['order_digest'] = $orderDigest;
            }
            $passwords = self::passwords($record);
            foreach ($databases as $database) {
                if (!isset($passwords[$database['name']])) {
                    $passwords[$database['name']] = Order::generatePassword();
                }
            }
            return self::withPasswords($record, $passwords);
        });
    }

    public static function recordJob(Store $store, string $serviceId, string $attemptKey, string $jobId, string $status): void
    {
        $store->update(self::key($serviceId), function (?array $record) use ($attemptKey, $jobId, $status) {
            $record = $record ?? [];
            if (($record['attempt_key'] ?? null) === $attemptKey) {
                $record['job_id'] = $jobId;
                // A late 202 must not overwrite a final status a callback already wrote.
                if ($status !== '' && (empty($record['job_status']) || $status !== 'accepted')) {
                    $record['job_status'] = $status;
                }
            }
            return $record;
        });
    }

    /** database name => password */
    public static function passwords(array $record): array
    {
        if (isset($record['db_passwords_enc']) && function_exists('decrypt')) {
            $decoded = json_decode((string) decrypt($record['db_passwords_enc']), true);
            return is_array($decoded) ? $decoded : [];
        }
        return is_array($record['db_passwords'] ?? null) ? $record['db_passwords'] : [];
    }

    private static function withPasswords(array $record, array $passwords): array
    {
        unset($record['db_passwords'], $record['db_passwords_enc']);
        if (function_exists('encrypt')) {
            $record['db_passwords_enc'] = encrypt(json_encode($passwords));
        } else {
            $record['db_passwords'] = $passwords;
        }
        return $record;
    }
}
