<?php
/**
 * A stand-in for WHMCS\Database\Capsule: the slice of Laravel's query builder the
 * module's CapsuleStore uses, over in-memory rows, enforcing the primary key the
 * way the database does (a duplicate insert throws).
 */

namespace WHMCS\Database;

final class CapsuleRows
{
    public static $tables = [];
    public static $created = [];
    /** @var string|null when set, every insert fails with this database error */
    public static $insertError;
}

final class CapsuleBlueprint
{
    public $columns = [];

    public function __call($method, $args)
    {
        if (isset($args[0]) && is_string($args[0])) {
            $this->columns[] = [$method, $args[0]];
        }
        return $this;  // chained modifiers: ->nullable()->index()->primary()
    }
}

final class CapsuleSchema
{
    public function hasTable($name)
    {
        return isset(CapsuleRows::$tables[$name]);
    }

    public function create($name, callable $define)
    {
        $blueprint = new CapsuleBlueprint();
        $define($blueprint);
        CapsuleRows::$tables[$name] = [];
        CapsuleRows::$created[$name] = $blueprint->columns;
    }
}

final class CapsuleQuery
{
    private $table;
    private $wheres = [];

    public function __construct($table)
    {
        $this->table = $table;
    }

    public function where($column, $operator, $value = null)
    {
        if (func_num_args() === 2) {
            list($operator, $value) = ['=', $operator];
        }
        $this->wheres[] = [$column, $operator, $value];
        return $this;
    }

    public function lockForUpdate()
    {
        return $this;
    }

    private function matches(array $row)
    {
        foreach ($this->wheres as list($column, $operator, $value)) {
            $cell = $row[$column] ?? null;
            if ($operator === '=' && $cell !== $value) {
                return false;
            }
            if ($operator === '<' && !($cell !== null && $cell < $value)) {
                return false;
            }
        }
        return true;
    }

    public function first()
    {
        foreach (CapsuleRows::$tables[$this->table] as $row) {
            if ($this->matches($row)) {
                return (object) $row;
            }
        }
        return null;
    }

    public function insert(array $row)
    {
        if (CapsuleRows::$insertError !== null) {
            throw new \RuntimeException(CapsuleRows::$insertError);
        }
        if (isset(CapsuleRows::$tables[$this->table][$row['name']])) {
            throw new \RuntimeException('Integrity constraint violation: Duplicate entry');
        }
        CapsuleRows::$tables[$this->table][$row['name']] = $row;
        return true;
    }

    public function update(array $fields)
    {
        foreach (CapsuleRows::$tables[$this->table] as $key => $row) {
            if ($this->matches($row)) {
                CapsuleRows::$tables[$this->table][$key] = array_merge($row, $fields);
            }
        }
    }

    public function delete()
    {
        foreach (CapsuleRows::$tables[$this->table] as $key => $row) {
            if ($this->matches($row)) {
                unset(CapsuleRows::$tables[$this->table][$key]);
            }
        }
    }
}

final class CapsuleConnection
{
    public function transaction(callable $work)
    {
        return $work();
    }
}

final class Capsule
{
    public static function schema()
    {
        return new CapsuleSchema();
    }

    public static function table($name)
    {
        return new CapsuleQuery($name);
    }

    public static function connection()
    {
        return new CapsuleConnection();
    }
}
