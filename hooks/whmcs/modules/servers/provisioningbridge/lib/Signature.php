<?php
/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com/), the scheme the
 * bridge uses both ways: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
 * base64-decoded secret (the part after "whsec_"), sent as "v1,<base64>".
 */

namespace ProvisioningBridge;

final class SignatureError extends \RuntimeException
{
    /** @var int the HTTP status a receiver should answer: 400 malformed, 401 not authentic or stale */
    public $status;

    public function __construct(int $status, string $message)
    {
        parent::__construct($message);
        $this->status = $status;
    }
}

final class Signature
{
    /** Seconds a timestamp may lie in the past or the future: the bridge uses the same window. */
    const TOLERANCE_S = 300;

    const PREFIX = 'whsec_';

    /** The raw HMAC key of a "whsec_..." secret; InvalidArgumentException when it is not one. */
    public static function key(string $secret): string
    {
        $secret = trim($secret);
        $encoded = strpos($secret, self::PREFIX) === 0 ? substr($secret, strlen(self::PREFIX)) : $secret;
        $raw = base64_decode($encoded, true);
        if ($encoded === '' || $raw === false || strlen($raw) < 16) {
            // Never echo the secret itself: the message may end up in a log.
            throw new \InvalidArgumentException('the webhook secret must be whsec_ followed by base64 of at least 16 bytes');
        }
        return $raw;
    }

    /** The three headers that sign $body (webhook-id, webhook-timestamp, webhook-signature). */
    public static function sign(string $secret, string $id, int $timestamp, string $body): array
    {
        return [
            'webhook-id' => $id,
            'webhook-timestamp' => (string) $timestamp,
            'webhook-signature' => 'v1,' . self::digest(self::key($secret), $id, (string) $timestamp, $body),
        ];
    }

    /**
     * Checks a signed request against every configured secret (several allow rotation).
     *
     * $headers must use lower-case names. Returns the webhook-id; throws SignatureError
     * (with the status to answer) otherwise.
     *
     * @param string[] $secrets
     */
    public static function verify(array $secrets, array $headers, string $body, ?int $now = null): string
    {
        $id = (string) ($headers['webhook-id'] ?? '');
        $stamp = (string) ($headers['webhook-timestamp'] ?? '');
        $offered = (string) ($headers['webhook-signature'] ?? '');
        $missing = [];
        foreach (['webhook-id' => $id, 'webhook-timestamp' => $stamp, 'webhook-signature' => $offered] as $name => $value) {
            if ($value === '') {
                $missing[] = $name;
            }
        }
        if ($missing) {
            throw new SignatureError(400, 'missing header(s): ' . implode(', ', $missing));
        }
        if (strlen($id) > 255) {
            throw new SignatureError(400, 'webhook-id: longer than 255 characters');
        }
        if (!ctype_digit($stamp)) {
            throw new SignatureError(400, 'webhook-timestamp: must be whole Unix seconds');
        }
        $now = $now ?? time();
        if (abs($now - (int) $stamp) > self::TOLERANCE_S) {
            // Both directions: a far-future stamp would otherwise stay replayable for longer.
            throw new SignatureError(401, 'webhook-timestamp: more than 5 minutes away from this server\'s clock');
        }
        $candidates = self::offered($offered);
        if (!$candidates) {
            throw new SignatureError(401, "webhook-signature: no v1 signature (expected 'v1,<base64>')");
        }
        foreach ($secrets as $secret) {
            $expected = self::digest(self::key($secret), $id, $stamp, $body);
            foreach ($candidates as $candidate) {
                if (hash_equals($expected, $candidate)) {
                    return $id;
                }
            }
        }
        throw new SignatureError(401, 'webhook-signature: does not match the configured secret');
    }

    private static function digest(string $key, string $id, string $stamp, string $body): string
    {
        return base64_encode(hash_hmac('sha256', $id . '.' . $stamp . '.' . $body, $key, true));
    }

    /** The base64 values of the "v1," entries of a space-separated signature header. */
    private static function offered(string $header): array
    {
        $values = [];
        foreach (preg_split('/\s+/', trim($header)) as $token) {
            $parts = explode(',', $token, 2);
            if (count($parts) === 2 && $parts[0] === 'v1' && $parts[1] !== '') {
                $values[] = $parts[1];
            }
        }
        return $values;
    }
}
