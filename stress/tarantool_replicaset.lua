-- Tarantool init script for one instance of greenpool's test replica set (stress/topologies.py).
-- $TARANTOOL_LISTEN: this instance's address; $TARANTOOL_REPLICATION: every member's address, comma-separated
-- (full mesh); $TARANTOOL_READ_ONLY=1 on the replicas. The writable instance creates what
-- stress/tarantool_init.lua creates (space `tester`, user $TARANTOOL_USER with full access and the
-- `replication` role, functions `echo` and `add`); the replicas receive it by replication.
local user = os.getenv('TARANTOOL_USER') or 'tester'
local password = os.getenv('TARANTOOL_PASSWORD') or 'tester-secret'
local peers = {}
for address in string.gmatch(os.getenv('TARANTOOL_REPLICATION') or '', '[^,]+') do
    table.insert(peers, user .. ':' .. password .. '@' .. address)
end
local read_only = os.getenv('TARANTOOL_READ_ONLY') == '1'

box.cfg{
    listen = os.getenv('TARANTOOL_LISTEN'),
    replication = peers,
    read_only = read_only,
    replication_connect_timeout = 10,
    replication_timeout = 0.2,
    log_level = 5,
    memtx_memory = 128 * 1024 * 1024,
    net_msg_max = 2048,
}

if not read_only then
    box.once('greenpool-init', function()
        local space = box.schema.space.create('tester', {format = {
            {name = 'id', type = 'unsigned'},
            {name = 'value', type = 'any', is_nullable = true},
        }})
        space:create_index('primary', {type = 'tree', parts = {1, 'unsigned'}})
        box.schema.user.create(user, {password = password})
        box.schema.user.grant(user, 'read,write,execute,create,drop', 'universe')
        box.schema.user.grant(user, 'replication')
    end)
end

function echo(...)
    return ...
end

function add(a, b)
    return a + b
end

-- The instance is ready once the schema has arrived (by replication on a replica) and it follows its peers.
local fiber = require('fiber')
fiber.create(function()
    while box.space.tester == nil or box.info.status ~= 'running' do
        fiber.sleep(0.02)
    end
    require('log').info('greenpool-ready')
end)
