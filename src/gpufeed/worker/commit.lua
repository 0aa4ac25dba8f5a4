-- gpufeed commit: write one result per entry and acknowledge it, atomically.
--
-- KEYS[1] input stream, KEYS[2] output stream, KEYS[3] dead-letter stream.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] MAXLEN ~ for written streams (0: none),
-- ARGV[4] '1' to XDEL acknowledged entries, ARGV[5] count of plain entries,
-- ARGV[6] count of other entries, ARGV[7] and ARGV[8] the lowest and highest
-- entry ids (or any ids bounding every entry's), ARGV[9] count R of reply_to
-- streams, then the R reply_to stream names, then two values per entry, plain
-- ones first:
--   plain: id, body              ok, to KEYS[2], no cid (the common case)
--   other: id, record            record = status(1) .. dest(2) .. cid_field(2) .. cid .. body
-- where cid_field is 0 without a cid, else the cid's length + 1, status is
-- 'o' ok, 'e' error, 'x' expired, dest is 0 for KEYS[2] or k for the k-th
-- reply_to stream; numbers big-endian.
-- Arguments cost more than bytes, so a record packs all but the id into one
-- string; plain entries need no record at all, and the loop that writes them
-- calls XADD directly: a table and unpack() per entry cost as much as the XADD.
--
-- reply_to streams are named by producers, so they are arguments, not KEYS:
-- Redis checks a script's KEYS against the user's ACL before it runs, and one
-- key the worker may not write would refuse the whole commit. Written with
-- pcall, a refused (or wrongly typed) reply_to fails only its own entry. On
-- Redis Cluster the ingest process has already rejected reply_to streams
-- outside the queue's hash slot, so every key here is in KEYS[1]'s slot.
--
-- Only entries still pending for *this* consumer are answered. An entry that
-- another consumer reclaimed (XAUTOCLAIM) or that was already committed (a
-- retried call after a lost reply) is skipped, which makes the script
-- idempotent and keeps "exactly one result per message" true.
-- Returns {answered, skipped, dead-lettered, expired}.

local group, consumer = ARGV[1], ARGV[2]
local maxlen = tonumber(ARGV[3])
local delete = ARGV[4] == '1'
local n_plain = tonumber(ARGV[5])
local n = n_plain + tonumber(ARGV[6])
local lowest, highest = ARGV[7], ARGV[8]
local n_reply = tonumber(ARGV[9])
local FIRST = 10 + n_reply
local STATUS = {[111] = 'ok', [101] = 'error', [120] = 'expired'}  -- Status.code -> name
local MAX_DEAD_FIELDS = 2000  -- stay far below Lua's unpack() limit

-- The output and dead-letter streams must be streams, or not exist yet. Redis keeps
-- what a script wrote before an error, so an XADD to a key of another type failing
-- half-way would leave results written and their entries unacknowledged, and the
-- retried commit would write them again. Checked before anything is written; the
-- worker reads this error as a misconfigured queue and retries later. XLEN, not
-- TYPE: it needs no permission beyond those the worker's ACL user already has, and a
-- key that does not exist yet answers 0.
for k = 2, 3 do
  local len = redis.pcall('XLEN', KEYS[k])
  if type(len) == 'table' and len.err then
    if not string.find(len.err, 'WRONGTYPE', 1, true) then
      return redis.error_reply(len.err)
    end
    return redis.error_reply('GPUFEED_WRONGTYPE ' .. KEYS[k] ..
                             ' is not a stream: rename or delete it')
  end
end

-- Streams written to, trimmed once at the end: MAXLEN ~ on every XADD costs
-- about as much as the XADD itself, and one XTRIM per call bounds them alike.
local written = {}
local function xadd(key, fields)
  written[key] = true
  return redis.call('XADD', key, '*', unpack(fields))
end

-- Which of the entries are still pending for this consumer, with their delivery
-- counts: one ranged XPENDING over the consumer's own PEL instead of one call
-- per entry. The caller computes the range (Lua would parse every id to find
-- it, on the one core Redis has; the worker has more).
local rows = {}
if n > 0 then
  rows = redis.call('XPENDING', KEYS[1], group, lowest, highest, 2 * n + 64, consumer)
end
-- The rows come in id order, and so, usually, do the entries (the ring keeps
-- the order of the reads): walking both together matches each entry to the
-- next row with one comparison of interned strings. Only an entry that breaks
-- step (a reclaimed one, older than the reads around it; or one whose row is
-- missing) builds the id -> row table, once.
local next_row, deliveries = 1, nil

-- The delivery count of an entry pending for this consumer, or nil. An entry
-- the ranged call did not list is asked about on its own: that is rare (work
-- another consumer reclaimed, a retried commit, a range holding more of ours
-- than the limit), and it keeps a wrong range from costing more than time.
local function pending(id)
  local row = rows[next_row]
  if row ~= nil and row[1] == id then
    next_row = next_row + 1
    return row[4]
  end
  if deliveries == nil then
    deliveries = {}
    for _, r in ipairs(rows) do deliveries[r[1]] = r[4] end
  end
  local times = deliveries[id]
  if times == nil then
    local row = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
    if #row > 0 then times = row[1][4] end
  end
  return times
end

local acked, skipped, dead_count, expired_count = {}, 0, 0, 0

for at = FIRST, FIRST + 2 * n_plain - 1, 2 do
  local id = ARGV[at]
  if pending(id) == nil then
    skipped = skipped + 1
  else
    redis.call('XADD', KEYS[2], '*', 'src', id, 'status', 'ok', 'data', ARGV[at + 1])
    acked[#acked + 1] = id
  end
end

-- The dead letter carries the original fields, read back from the input stream.
local function dead_letter(id, reason, times)
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
  dead[#dead + 1] = reason
  dead[#dead + 1] = 'deliveries'
  dead[#dead + 1] = tostring(times)
  dead[#dead + 1] = 'consumer'
  dead[#dead + 1] = consumer
  xadd(KEYS[3], dead)
end

for at = FIRST + 2 * n_plain, FIRST + 2 * n - 1, 2 do
  local id, record = ARGV[at], ARGV[at + 1]
  local times = pending(id)
  if times == nil then
    skipped = skipped + 1
  else
    local code, d1, d2, c1, c2 = string.byte(record, 1, 5)
    local status = STATUS[code]
    local cid_field = c1 * 256 + c2  -- 0: no cid, else its length + 1
    local cid_len = cid_field > 0 and cid_field - 1 or 0
    local body = string.sub(record, 6 + cid_len)
    local result = {'src', id, 'status', status, status == 'ok' and 'data' or 'error', body}
    if cid_field > 0 then
      result[7] = 'cid'
      result[8] = string.sub(record, 6, 5 + cid_len)
    end
    local dest = d1 * 256 + d2
    if dest > 0 then
      local reply_to = ARGV[9 + dest]
      -- A reply_to stream is the producer's choice: it may be another type or a key
      -- the worker's ACL user may not write. pcall keeps that from aborting the
      -- script half-way (scripts are not rolled back); the message is answered on
      -- the output stream instead, as an error, and dead-lettered.
      local added = redis.pcall('XADD', reply_to, '*', unpack(result))
      if type(added) == 'table' and added.err then
        local why = 'cannot write reply_to ' .. reply_to .. ': ' .. added.err
        body = status == 'error' and (why .. '; ' .. body) or why
        status = 'error'
        result[4], result[5], result[6] = status, 'error', body
        xadd(KEYS[2], result)
      else
        written[reply_to] = true
      end
    else
      xadd(KEYS[2], result)
    end
    if status == 'error' then
      dead_letter(id, body, times)
      dead_count = dead_count + 1
    elseif status == 'expired' then
      expired_count = expired_count + 1
    end
    acked[#acked + 1] = id
  end
end

for first = 1, #acked, 1000 do
  local last = math.min(first + 999, #acked)
  redis.call('XACK', KEYS[1], group, unpack(acked, first, last))
  if delete then
    redis.call('XDEL', KEYS[1], unpack(acked, first, last))
  end
end
if #acked > 0 and n_plain > 0 then written[KEYS[2]] = true end
if maxlen > 0 then
  for key in pairs(written) do
    redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
  end
end
return {#acked, skipped, dead_count, expired_count}
