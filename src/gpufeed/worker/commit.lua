-- gpufeed commit: write one result per entry and acknowledge it, atomically.
--
-- KEYS[1] input stream, KEYS[2] output stream, KEYS[3] dead-letter stream,
-- KEYS[4..] reply_to streams named by entries of this batch.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] MAXLEN ~ for written streams (0: none),
-- ARGV[4] '1' to XDEL acknowledged entries, ARGV[5] entry count, then six values
-- per entry: id, index of its result stream in KEYS, status, body, has_cid, cid.
--
-- Only entries still pending for *this* consumer are answered. An entry that
-- another consumer reclaimed (XAUTOCLAIM) or that was already committed (a
-- retried call after a lost reply) is skipped, which makes the script
-- idempotent and keeps "exactly one result per message" true.
-- Returns {answered, skipped}.

local group, consumer = ARGV[1], ARGV[2]
local maxlen = tonumber(ARGV[3])
local delete = ARGV[4] == '1'
local n = tonumber(ARGV[5])
local MAX_DEAD_FIELDS = 2000  -- stay far below Lua's unpack() limit

local function xadd(key, fields)
  if maxlen > 0 then
    return redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  return redis.call('XADD', key, '*', unpack(fields))
end

local acked, skipped = {}, 0
for i = 0, n - 1 do
  local at = 6 + i * 6
  local id, dest, status, body = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
  if #pending == 0 then
    skipped = skipped + 1
  else
    local result = {'src', id, 'status', status}
    if status == 'ok' then
      result[5], result[6] = 'data', body
    else
      result[5], result[6] = 'error', body
    end
    if ARGV[at + 4] == '1' then
      result[#result + 1] = 'cid'
      result[#result + 1] = ARGV[at + 5]
    end
    xadd(KEYS[dest], result)
    if status == 'error' then
      -- the dead letter carries the original fields, read back from the stream
      local dead = {}
      local original = redis.call('XRANGE', KEYS[1], id, id)
      if #original > 0 then
        local fields = original[1][2]
        local count = math.min(#fields, MAX_DEAD_FIELDS)
        for f = 1, count - 1, 2 do
          local name = fields[f]
          if name ~= 'src' and name ~= 'error' and name ~= 'deliveries' and name ~= 'consumer' then
            dead[#dead + 1] = name
            dead[#dead + 1] = fields[f + 1]
          end
        end
        if #fields > count then
          dead[#dead + 1] = 'fields_dropped'
          dead[#dead + 1] = tostring((#fields - count) / 2)
        end
      end
      dead[#dead + 1] = 'src'
      dead[#dead + 1] = id
      dead[#dead + 1] = 'error'
      dead[#dead + 1] = body
      dead[#dead + 1] = 'deliveries'
      dead[#dead + 1] = tostring(pending[1][4])
      dead[#dead + 1] = 'consumer'
      dead[#dead + 1] = consumer
      xadd(KEYS[3], dead)
    end
    acked[#acked + 1] = id
  end
end

for first = 1, #acked, 1000 do
  local chunk = {unpack(acked, first, math.min(first + 999, #acked))}
  redis.call('XACK', KEYS[1], group, unpack(chunk))
  if delete then
    redis.call('XDEL', KEYS[1], unpack(chunk))
  end
end
return {#acked, skipped}
