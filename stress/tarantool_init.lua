-- Tarantool init script for greenpool's tests, stress harness and docker-compose service.
-- Listens on $TARANTOOL_LISTEN (default 3301); creates the `tester` space (primary index on field 1),
-- a user $TARANTOOL_USER / $TARANTOOL_PASSWORD (default tester / tester-secret) with full access, and
-- global functions `echo` and `add` for `call`.
box.cfg{
    listen = os.getenv('TARANTOOL_LISTEN') or '3301',
    log_level = 5,
    memtx_memory = 256 * 1024 * 1024,
    net_msg_max = 2048,
}

box.once('greenpool-init', function()
    local space = box.schema.space.create('tester', {format = {
        {name = 'id', type = 'unsigned'},
        {name = 'value', type = 'any', is_nullable = true},
    }})
    space:create_index('primary', {type = 'tree', parts = {1, 'unsigned'}})
    box.schema.user.create(os.getenv('TARANTOOL_USER') or 'tester',
        {password = os.getenv('TARANTOOL_PASSWORD') or 'tester-secret'})
    box.schema.user.grant(os.getenv('TARANTOOL_USER') or 'tester', 'read,write,execute,create,drop', 'universe')
end)

function echo(...)
    return ...
end

function add(a, b)
    return a + b
end

-- The tests and the harness wait for this line before they connect.
require('log').info('greenpool-ready')
