<?php
/**
 * The module's small memory: one key/value table shared by the server module and
 * the callback receiver.
 *
 *   service:<serviceid>  {"attempt_key", "job_id", "job_status", "db_passwords"}
 *   ticket:<serviceid>   {"ticket_id"}            the open failure ticket of a service
 *   seen:<sha256(id)>    {"timestamp"}            callback ids already handled (expires)
 *
 * Inside WHMCS it lives in the table mod_provisioningbridge (created on first use
 * through Capsule). Without Capsule (tests, a stand-alone receiver) it is one JSON
 * file guarded by flock() in PROVISIONINGBRIDGE_STATE_DIR or the temp directory.
 */

namespace ProvisioningBridge;

abstract class Store
{
    const TABLE = 'mod_provisioningbridge';

    /** The store for this installation: the WHMCS database when there is one, else a file. */
    public static function open(?string $stateDir = null): Store
    {
        if (class_exists('\WHMCS\Database\Capsule') || class_exists('\Illuminate\Database\Capsule\Manager')) {
            return new CapsuleStore();
        }
        $dir = $stateDir ?: (getenv('PROVISIONINGBRIDGE_STATE_DIR') ?: sys_get_temp_dir() . '/provisioningbridge');
        return new FileStore($dir);
    }

    abstract public function get(string $key): ?array;

    /**
     * Reads, changes and writes one entry atomically; $change gets the current value
     * (null when absent) and returns the new one (null deletes it).
     */
    abstract public function update(string $key, callable $change, ?int $ttlSeconds = null): ?array;

    /** Stores $value only if $key is absent (or expired); true when this call stored it. */
    abstract public function addIfAbsent(string $key, array $value, int $ttlSeconds): bool;

    public function put(string $key, array $value, ?int $ttlSeconds = null): void
    {
        $this->update($key, function () use ($value) {
            return $value;
        }, $ttlSeconds);
    }

    public function delete(string $key): void
    {
        $this->update($key, function () {
            return null;
        });
    }
}

/** The WHMCS database, through Laravel's query builder as WHMCS provides it. */
final class CapsuleStore extends Store
{
    /** @var string */
    private $capsule;

    public function __construct()
    {
        $this->capsule = class_exists('\WHMCS\Database\Capsule') ? '\WHMCS\Database\Capsule' : '\Illuminate\Database\Capsule\Manager';
        $this->ensureTable();
    }

    private function ensureTable(): void
    {
        $capsule = $this->capsule;
        if ($capsule::schema()->hasTable(self::TABLE)) {
            return;
        }
        $capsule::schema()->create(self::TABLE, function ($table) {
            $table->string('name', 191)->primary();
            $table->mediumText('value');
            $table->integer('expires_at')->nullable()->index();
        });
    }

    private function table()
    {
        $capsule = $this->capsule;
        return $capsule::table(self::TABLE);
    }

    public function get(string $key): ?array
    {
        $row = $this->table()->where('name', $key)->first();
        if (!$row || ($row->expires_at !== null && (int) $row->expires_at < time())) {
            return null;
        }
        $value = json_decode($row->value, true);
        return is_array($value) ? $value : null;
    }

    public function update(string $key, callable $change, ?int $ttlSeconds = null): ?array
    {
        $capsule = $this->capsule;
        return $capsule::connection()->transaction(function () use ($key, $change, $ttlSeconds) {
            // The row lock makes concurrent read-modify-write of one service sequential.
            $row = $this->table()->where('name', $key)->lockForUpdate()->first();
            $current = null;
            if ($row && ($row->expires_at === null || (int) $row->expires_at >= time())) {
                $current = json_decode($row->value, true);
            }
            $next = $change(is_array($current) ? $current : null);
            if ($next === null) {
                $this->table()->where('name', $key)->delete();
                return null;
            }
            $fields = ['value' => json_encode($next), 'expires_at' => $ttlSeconds ? time() + $ttlSeconds : null];
            if ($row) {
                $this->table()->where('name', $key)->update($fields);
            } else {
                $this->table()->insert(['name' => $key] + $fields);
            }
            return $next;
        });
    }

    public function addIfAbsent(string $key, array $value, int $ttlSeconds): bool
    {
        $this->table()->where('expires_at', '<', time())->delete();
        try {
            // The primary key decides between two concurrent deliveries of one id.
            $this->table()->insert(['name' => $key, 'value' => json_encode($value), 'expires_at' => time() + $ttlSeconds]);
            return true;
        } catch (\Exception $e) {
            // Only the key being taken means "already there"; any other failure (a deadlock,
            // a lost connection) is the database's, and the caller must not take it for a duplicate.
            if ($this->get($key) === null) {
                throw $e;
            }
            return false;
        }
    }
}

/** One JSON file, every change under an exclusive lock; expired entries pruned on write. */
final class FileStore extends Store
{
    /** @var string */
    private $dir;

    public function __construct(string $dir)
    {
        if (!is_dir($dir) && !@mkdir($dir, 0700, true) && !is_dir($dir)) {
            throw new \RuntimeException("cannot create the state directory $dir");
        }
        $this->dir = $dir;
    }

    public function get(string $key): ?array
    {
        return $this->locked(function (array &$entries) use ($key) {
            return $entries[$key]['value'] ?? null;
        });
    }

    public function update(string $key, callable $change, ?int $ttlSeconds = null): ?array
    {
        return $this->locked(function (array &$entries) use ($key, $change, $ttlSeconds) {
            $next = $change($entries[$key]['value'] ?? null);
            if ($next === null) {
                unset($entries[$key]);
            } else {
                $entries[$key] = ['value' => $next, 'expires_at' => $ttlSeconds ? time() + $ttlSeconds : null];
            }
            return $next;
        }, true);
    }

    public function addIfAbsent(string $key, array $value, int $ttlSeconds): bool
    {
        return $this->locked(function (array &$entries) use ($key, $value, $ttlSeconds) {
            if (isset($entries[$key])) {
                return false;
            }
            $entries[$key] = ['value' => $value, 'expires_at' => time() + $ttlSeconds];
            return true;
        }, true);
    }

    private function locked(callable $work, bool $write = false)
    {
        $lock = fopen($this->dir . '/state.lock', 'c');
        if ($lock === false || !flock($lock, $write ? LOCK_EX : LOCK_SH)) {
            throw new \RuntimeException('cannot lock the state file in ' . $this->dir);
        }
        try {
            $entries = $this->load();
            $result = $work($entries);
            if ($write) {
                $this->save($entries);
            }
            return $result;
        } finally {
            flock($lock, LOCK_UN);
            fclose($lock);
        }
    }

    /**
     * The entries in state.json; none when there is no such file yet. A file that is there but
     * cannot be read or parsed is an exception, never "empty": the next write would replace it
     * with that write's one entry, and every other service's state would be gone.
     */
    private function load(): array
    {
        $path = $this->dir . '/state.json';
        error_clear_last();  // a read that fails part-way returns what it got, with only a notice
        $text = @file_get_contents($path);
        if ($text === false || error_get_last() !== null) {
            clearstatcache(true, $path);
            // Only nothing at all is "no state yet"; a link to a file that is gone is not.
            if ($text === false && !file_exists($path) && !is_link($path)) {
                return [];
            }
            throw new \RuntimeException("cannot read the state file $path: " . self::lastError());
        }
        $entries = json_decode($text, true);
        if (!is_array($entries)) {
            $error = json_last_error() !== JSON_ERROR_NONE ? json_last_error_msg() : 'not a JSON object';
            throw new \RuntimeException("cannot read the state file $path: $error");
        }
        // save() writes an object, or [] once there are no entries: a list is not our state.
        if ($entries !== [] && ltrim($text)[0] !== '{') {
            throw new \RuntimeException("cannot read the state file $path: not a JSON object");
        }
        $now = time();
        foreach ($entries as $key => $entry) {
            if (isset($entry['expires_at']) && $entry['expires_at'] < $now) {
                unset($entries[$key]);
            }
        }
        return $entries;
    }

    /**
     * Writes a temporary file and renames it over state.json, so a reader never sees half a
     * file and a failed write leaves the previous state whole. Any failure is an exception:
     * a change that was not written must never be taken for stored.
     */
    private function save(array $entries): void
    {
        $path = $this->dir . '/state.json';
        $json = json_encode($entries);
        if ($json === false) {
            throw new \RuntimeException("cannot write the state file $path: " . json_last_error_msg());
        }
        $tmp = $path . '.' . bin2hex(random_bytes(4));
        error_clear_last();  // so that the message reported is this write's
        $file = @fopen($tmp, 'x');
        if ($file === false) {
            throw new \RuntimeException("cannot write the state file $path: " . self::lastError());
        }
        // Private before anything is in it: the entries hold database passwords.
        $ok = @chmod($tmp, 0600) && @fwrite($file, $json) === strlen($json) && @fflush($file)
            && (!function_exists('fsync') || @fsync($file));  // on disk before it replaces the old state (PHP 8.1+)
        $ok = @fclose($file) && $ok;
        if (!$ok || !@rename($tmp, $path)) {
            $error = self::lastError();
            @unlink($tmp);
            throw new \RuntimeException("cannot write the state file $path: $error");
        }
    }

    private static function lastError(): string
    {
        return error_get_last()['message'] ?? 'unknown error';
    }
}
