<?php
/**
 * HTTP calls from WHMCS to the bridge, each one written to WHMCS's module log with
 * its secrets masked.
 *
 * Masking happens twice on purpose: by field name before anything is logged (so a
 * secret is hidden wherever it sits in the request, whatever its value), and by
 * value through logModuleCall's $replaceVars (so a copy somewhere unexpected, such
 * as an error message echoing a field, is scrubbed as well).
 */

namespace ProvisioningBridge;

final class BridgeResponse
{
    /** @var int HTTP status; 0 when no answer came */
    public $status = 0;
    /** @var mixed decoded JSON body, or null */
    public $json;
    /** @var string */
    public $raw = '';
    /** @var string transport error (empty when an answer came) */
    public $transportError = '';

    public function ok(): bool
    {
        return $this->status >= 200 && $this->status < 300;
    }

    /** The bridge's error text with its field details, for the WHMCS admin. */
    public function errorText(): string
    {
        if ($this->transportError !== '') {
            return $this->transportError;
        }
        $message = is_array($this->json) && isset($this->json['error']) ? (string) $this->json['error'] : trim(substr($this->raw, 0, 300));
        $details = [];
        foreach ((is_array($this->json) ? ($this->json['fields'] ?? []) : []) as $field) {
            if (isset($field['loc'], $field['msg']) && strpos($message, (string) $field['msg']) === false) {
                $details[] = $field['loc'] . ': ' . $field['msg'];
            }
        }
        $text = 'HTTP ' . $this->status . ($message !== '' ? ': ' . $message : '');
        return $details ? $text . ' (' . implode('; ', $details) . ')' : $text;
    }
}

final class BridgeClient
{
    const MODULE = 'provisioningbridge';
    const MASK = '********';
    /** Field names whose values are never logged, wherever they appear. */
    const SECRET_KEYS = '/pass|secret|token|authorization|api[_-]?key/i';

    /** @var Settings */
    private $settings;
    /** @var string[] extra values to scrub from the log (passwords of this order) */
    private $secrets;

    public function __construct(Settings $settings, array $secrets = [])
    {
        $this->settings = $settings;
        $this->secrets = array_merge($secrets, [$settings->webhookSecret, $settings->adminToken]);
    }

    /** POSTs a signed order event to /webhooks/orders. */
    public function sendEvent(string $action, string $webhookId, array $event): BridgeResponse
    {
        $body = self::json($event);
        $headers = Signature::sign($this->settings->webhookSecret, $webhookId, time(), $body);
        $headers['Content-Type'] = 'application/json';
        return $this->call($action, 'POST', '/webhooks/orders', $headers, $body);
    }

    /** A call to the admin API, with the bearer token. */
    public function admin(string $action, string $method, string $path, ?array $body = null): BridgeResponse
    {
        if ($this->settings->adminToken === '') {
            $response = new BridgeResponse();
            $response->transportError = 'no admin_token in the server\'s Access Hash; the admin API cannot be used';
            return $response;
        }
        $headers = ['Authorization' => 'Bearer ' . $this->settings->adminToken, 'Accept' => 'application/json'];
        $encoded = null;
        if ($body !== null) {
            $encoded = self::json($body);
            $headers['Content-Type'] = 'application/json';
        }
        return $this->call($action, $method, $path, $headers, $encoded);
    }

    /** The request body; an exception rather than an empty body when a value cannot be encoded. */
    private static function json(array $data): string
    {
        $body = json_encode($data, JSON_UNESCAPED_SLASHES);
        if ($body === false) {
            // The message names the problem, never the value (it may be a password).
            throw new \RuntimeException('the request cannot be encoded as JSON, nothing was sent: '
                . json_last_error_msg() . ' (every field must be UTF-8)');
        }
        return $body;
    }

    /** A call without credentials (health checks). */
    public function plain(string $action, string $method, string $path): BridgeResponse
    {
        return $this->call($action, $method, $path, [], null);
    }

    private function call(string $action, string $method, string $path, array $headers, ?string $body): BridgeResponse
    {
        $url = $this->settings->baseUrl . $path;
        $response = $this->transfer($method, $url, $headers, $body);
        $this->log($action, $method, $url, $headers, $body, $response);
        return $response;
    }

    private function transfer(string $method, string $url, array $headers, ?string $body): BridgeResponse
    {
        $response = new BridgeResponse();
        $lines = [];
        foreach ($headers as $name => $value) {
            $lines[] = $name . ': ' . $value;
        }
        $curl = curl_init($url);
        curl_setopt_array($curl, [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => $lines,
            CURLOPT_RETURNTRANSFER => true,
            // The bridge answers in milliseconds; a slow answer means it is in trouble.
            CURLOPT_CONNECTTIMEOUT => 5,
            CURLOPT_TIMEOUT => 20,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_SSL_VERIFYPEER => true,
            CURLOPT_SSL_VERIFYHOST => 2,
        ]);
        if ($this->settings->caFile !== '') {
            curl_setopt($curl, CURLOPT_CAINFO, $this->settings->caFile);
        }
        if ($body !== null) {
            curl_setopt($curl, CURLOPT_POSTFIELDS, $body);
        }
        $raw = curl_exec($curl);
        if ($raw === false) {
            $response->transportError = 'could not reach the bridge at ' . $this->settings->baseUrl . ': ' . curl_error($curl);
        } else {
            $response->status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
            $response->raw = (string) $raw;
            $response->json = json_decode($response->raw, true);
        }
        curl_close($curl);
        return $response;
    }

    private function log(string $action, string $method, string $url, array $headers, ?string $body, BridgeResponse $response): void
    {
        if (!function_exists('logModuleCall')) {
            return;
        }
        $request = ['method' => $method, 'url' => $url, 'headers' => self::maskByKey($headers)];
        if ($body !== null) {
            $decoded = json_decode($body, true);
            $request['body'] = is_array($decoded) ? self::maskByKey($decoded) : self::MASK;
        }
        $answer = $response->transportError !== '' ? $response->transportError : 'HTTP ' . $response->status . "\n" . $response->raw;
        $processed = is_array($response->json) ? self::maskByKey($response->json) : $answer;
        logModuleCall(self::MODULE, $action, $request, self::scrub($answer, $this->secrets), $processed, $this->replaceVars());
    }

    /** Non-empty secrets, longest first, so that a secret containing another is replaced whole. */
    private function replaceVars(): array
    {
        $values = array_values(array_unique(array_filter(array_map('strval', $this->secrets), 'strlen')));
        usort($values, function ($a, $b) {
            return strlen($b) - strlen($a);
        });
        return $values;
    }

    /** $data with the value of every secret-named field replaced, recursively. */
    public static function maskByKey(array $data): array
    {
        foreach ($data as $key => $value) {
            if (is_string($key) && preg_match(self::SECRET_KEYS, $key)) {
                $data[$key] = self::MASK;
            } elseif (is_array($value)) {
                $data[$key] = self::maskByKey($value);
            }
        }
        return $data;
    }

    private static function scrub(string $text, array $secrets): string
    {
        foreach ($secrets as $secret) {
            if ((string) $secret !== '') {
                $text = str_replace((string) $secret, self::MASK, $text);
            }
        }
        return $text;
    }
}
