"""The client half of cachewarden's fenced-fill protocol.

The worker raises *fill marks* before it unlinks anything of a rule with ``fenced_fills = true``:
``<prefix>cw:v:<key>`` for a key or a tag set, ``<prefix>cw:p:<literal prefix>`` for a pattern.
A fill takes a *token* (the newest mark among the key's, its tag sets' and the pattern marks of
every prefix of them) before it reads the database, and sets the value only if the token is
unchanged when it writes: an invalidation that happened after the read began refuses the fill.

The script is the worker's own (``FILL_SCRIPT`` in the crate's ``src/fence.rs``), one script in
two modes: with the key prefix alone it returns the token; with the token, the value and the
TTL it fills, or refuses. A test of the crate checks it is identical here.
"""

# BEGIN FILL_SCRIPT
FILL_SCRIPT = r"""
local function token(keys, prefix)
  local best = ''
  local function see(v) if v and v > best then best = v end end
  local plen = #prefix
  for _, k in ipairs(keys) do
    local rest = k
    if k:sub(1, plen) == prefix then rest = k:sub(plen + 1) end
    see(redis.call('GET', prefix .. 'cw:v:' .. rest))
    for i = 0, #rest do
      see(redis.call('GET', prefix .. 'cw:p:' .. rest:sub(1, i)))
    end
  end
  return best
end
local now = token(KEYS, ARGV[1])
if #ARGV == 1 then return now end
if now ~= ARGV[2] then return 0 end
local ttl = tonumber(ARGV[4])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[3])
end
for i = 2, #KEYS do redis.call('SADD', KEYS[i], KEYS[1]) end
return 1
"""
# END FILL_SCRIPT
