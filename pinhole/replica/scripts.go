package replica

import "github.com/redis/go-redis/v9"

// The scripts run atomically in Redis: a write, a claim and a takeover each see and change the
// epoch, the owner and the log in one step, so that no write of a fenced term lands after the
// takeover that fenced it.

// newTerm (inlined in the scripts that take a term) is one above the epoch, and never below
// Redis's clock in milliseconds: a term taken after Redis lost its data (and its epoch) still
// supersedes one taken before.
const newTerm = `
local function newterm(epoch)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local e = tonumber(redis.call('GET', epoch) or '0')
  local term = math.max(e + 1, now)
  redis.call('SET', epoch, string.format('%d', term))
  return string.format('%d', term)
end
`

// writeScript writes a batch of records under a term.
//
// KEYS: epoch, owner, seq, log, complete, then the records' keys.
// ARGV: term, id, lease (ms), log length, mark ("complete", or ""), then per record its name and
// value ("" deletes it).
// Reply: {"ok", seq} (seq 0: nothing logged, a heartbeat), {"lost"} when Redis has no epoch (it
// lost its data), {"fenced", epoch, owner}.
var writeScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if not e then return {'lost'} end
if e ~= ARGV[1] then return {'fenced', e, redis.call('GET', KEYS[2]) or ''} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local n = #KEYS - 5
if n == 0 and ARGV[5] ~= 'complete' then return {'ok', 0} end
local seq = redis.call('INCR', KEYS[3])
local entry = {'seq', tostring(seq), 'term', ARGV[1]}
for i = 1, n do
  local name, v = ARGV[4 + 2*i], ARGV[5 + 2*i]
  if v == '' then redis.call('DEL', KEYS[5 + i]) else redis.call('SET', KEYS[5 + i], v) end
  entry[#entry + 1] = name
  entry[#entry + 1] = v
end
if ARGV[5] == 'complete' then
  redis.call('SET', KEYS[5], ARGV[1])
  entry[#entry + 1] = '!complete'
  entry[#entry + 1] = ARGV[1]
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(entry))
return {'ok', seq}
`)

// reclaimScript re-establishes a writer's term in a Redis that lost its data, unless a later
// term took over meanwhile; the state is incomplete until the writer wrote it all again.
//
// KEYS: epoch, owner, complete. ARGV: term, id, lease (ms).
// Reply: {"ok"} or {"fenced", epoch, owner}.
var reclaimScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if e and tonumber(e) > tonumber(ARGV[1]) then return {'fenced', e, redis.call('GET', KEYS[2]) or ''} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'ok'}
`)

// takeoverScript takes a new term for a sipcar whose copy holds every write up to seq.
//
// KEYS: epoch, owner, seq, complete. ARGV: seq, id, lease (ms), exclusive ("1": not while another
// sipcar's lease runs, for an active that starts; a standby the addresses moved to takes over
// regardless).
// Reply: {"ok", term}, {"behind", seq} (more was written: read it first), {"incomplete"} (the
// active is writing its state again after Redis lost it), {"held", owner}.
var takeoverScript = redis.NewScript(newTerm + `
local o = redis.call('GET', KEYS[2])
if ARGV[4] == '1' and o and o ~= ARGV[2] then return {'held', o} end
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('EXISTS', KEYS[4]) == 0 then return {'incomplete'} end
local s = redis.call('GET', KEYS[3]) or '0'
if s ~= ARGV[1] then return {'behind', s} end
local term = newterm(KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'ok', term}
`)

// claimScript takes a new term for an active that starts without the records (Redis could not
// be reached when it started), unless another sipcar's lease runs.
//
// KEYS: epoch, owner, complete. ARGV: id, lease (ms).
// Reply: {"ok", term} or {"held", owner}.
var claimScript = redis.NewScript(newTerm + `
local o = redis.call('GET', KEYS[2])
if o and o ~= ARGV[1] then return {'held', o} end
local term = newterm(KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'ok', term}
`)
