{if $pbUnavailable}
<p>The database details cannot be shown right now. Please try again later or contact support.</p>
{/if}
{if $pbDatabases}
<h4>Databases</h4>
<table class="table table-striped">
    <tr><th>Database</th><th>User</th><th>Password</th></tr>
    {foreach $pbDatabases as $db}
        <tr><td>{$db.name|escape}</td><td>{$db.user|escape}</td><td><code>{$db.password|escape}</code></td></tr>
    {/foreach}
</table>
{/if}
