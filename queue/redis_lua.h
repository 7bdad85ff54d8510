/* queue/redis_lua.h — the Lua scripts of the Redis Streams backend (private to queue/redis.c).
 *
 * Each script does one multi-step change atomically on the server. Time inside the scripts comes from the
 * server's TIME (redis 7 replicates script effects, so TIME before a write is allowed): every delayed score is
 * on one clock whatever the clients' clocks say.
 * Keys that are not in KEYS (dlq requeue publishes to "nq:<topic>") assume a standalone server, not a cluster.
 */
#ifndef NQ_QUEUE_REDIS_LUA_H
#define NQ_QUEUE_REDIS_LUA_H

enum {
  NQ_LUA_NACK,     /* XACK + (ZADD delayed | XADD now) */
  NQ_LUA_DEAD,     /* XACK + XADD nq:dlq */
  NQ_LUA_REQUEUE,  /* nq:dlq entry -> its topic stream, XDEL */
  NQ_LUA_PURGE,    /* XLEN + DEL nq:dlq */
  NQ_LUA_JOB_MARK, /* task status -> counts, once per task */
  NQ_LUA_TRIM,     /* XTRIM MINID below every group's oldest pending/undelivered entry */
  NQ_LUA_COUNT_AFTER, /* entries after a group's last-delivered-id (depth when XINFO's lag is nil) */
  NQ_LUA_FETCH,    /* XAUTOCLAIM + delivery counts + move due retries + XREADGROUP (no BLOCK): one round trip */
  NQ_LUA_COMPLETE, /* per item: XACK + XADD result + job_mark (complete_batch) */
  NQ_LUA_N
};

/* Server time in ms. */
#define NQ__LUA_NOW                              \
  "local tm = redis.call('TIME')\n"              \
  "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"

static const char *const nq_lua_src[NQ_LUA_N] = {
    /* NACK: KEYS[1]=stream, KEYS[2]=delayed; ARGV group, id, delay_ms, body, uniq.
     * Only a message still pending is rescheduled (a retry is never doubled). Returns 1 if scheduled. */
    [NQ_LUA_NACK] =
    "if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "local d = tonumber(ARGV[3])\n"
    "if d <= 0 then\n"
    "  redis.call('XADD', KEYS[1], '*', 'body', ARGV[4])\n"
    "  return 1\n"
    "end\n" NQ__LUA_NOW
    "redis.call('ZADD', KEYS[2], now + d, ARGV[5] .. '\\n' .. ARGV[4])\n"
    "return 1\n",

    /* DEAD: KEYS[1]=stream, KEYS[2]=dlq; ARGV group, id, topic, reason, body. Returns 1 if moved. */
    [NQ_LUA_DEAD] =
    "if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "redis.call('XADD', KEYS[2], '*', 'topic', ARGV[3], 'reason', ARGV[4], 'body', ARGV[5], 'id', ARGV[2],"
    " 'group', ARGV[1])\n"
    "return 1\n",

    /* REQUEUE: KEYS[1]=dlq; ARGV[1]='one'|'batch', ARGV[2]=id (one) or exclusive start (batch, '-' first),
     * ARGV[3]=stream key prefix. Entries without topic/body are left where they are.
     * Returns {requeued, last id looked at or ''}. */
    [NQ_LUA_REQUEUE] =
    "local ents\n"
    "if ARGV[1] == 'one' then ents = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])\n"
    "else ents = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', 100) end\n"
    "local n, last = 0, ''\n"
    "for _, e in ipairs(ents) do\n"
    "  last = e[1]\n"
    "  local f = e[2]\n"
    "  local topic, body = nil, nil\n"
    "  for i = 1, #f, 2 do\n"
    "    if f[i] == 'topic' then topic = f[i + 1] elseif f[i] == 'body' then body = f[i + 1] end\n"
    "  end\n"
    "  if topic and body then\n"
    "    redis.call('XADD', ARGV[3] .. topic, '*', 'body', body)\n"
    "    redis.call('XDEL', KEYS[1], e[1])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return {n, last}\n",

    /* PURGE: KEYS[1]=dlq. Returns the number of entries removed. */
    [NQ_LUA_PURGE] =
    "local n = redis.call('XLEN', KEYS[1])\n"
    "redis.call('DEL', KEYS[1])\n"
    "return n\n",

    /* JOB_MARK: KEYS[1]=job hash, KEYS[2]=task hash; ARGV task, status.
     * Returns {total, ok, failed, dead, changed} (strings, then an integer). */
    [NQ_LUA_JOB_MARK] =
    "local old = redis.call('HGET', KEYS[2], ARGV[1])\n"
    "local ch = 0\n"
    "if old ~= ARGV[2] then\n"
    "  if old then redis.call('HINCRBY', KEYS[1], old, -1) end\n"
    "  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)\n"
    "  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
    "  ch = 1\n"
    "end\n"
    "local v = redis.call('HMGET', KEYS[1], 'total', 'ok', 'failed', 'dead')\n"
    "return {v[1] or '-1', v[2] or '0', v[3] or '0', v[4] or '0', ch}\n",

    /* TRIM: KEYS[1]=stream. Never trims past a pending or undelivered entry of any group; no group -> no trim.
     * Returns the number of entries trimmed. */
    [NQ_LUA_TRIM] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "local function cmp(a, b)\n"
    "  local a1, a2 = string.match(a, '^(%d+)-(%d+)$')\n"
    "  local b1, b2 = string.match(b, '^(%d+)-(%d+)$')\n"
    "  a1, a2, b1, b2 = tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)\n"
    "  if a1 ~= b1 then return a1 < b1 end\n"
    "  return a2 < b2\n"
    "end\n"
    "local groups = redis.call('XINFO', 'GROUPS', KEYS[1])\n"
    "if #groups == 0 then return 0 end\n"
    "local minid = nil\n"
    "for _, g in ipairs(groups) do\n"
    "  local t = {}\n"
    "  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end\n"
    "  local cand = t['last-delivered-id']\n"
    "  if tonumber(t['pending']) > 0 then\n"
    "    local p = redis.call('XPENDING', KEYS[1], t['name'])\n"
    "    if p[2] then cand = p[2] end\n"
    "  end\n"
    "  if minid == nil or cmp(cand, minid) then minid = cand end\n"
    "end\n"
    "if minid == '0-0' then return 0 end\n"
    "return redis.call('XTRIM', KEYS[1], 'MINID', minid)\n",

    /* COUNT_AFTER: KEYS[1]=stream; ARGV[1]=last-delivered-id. */
    [NQ_LUA_COUNT_AFTER] = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+')\n",

    /* FETCH: KEYS[1..T]=streams, KEYS[T+1..2T]=their delayed zsets; ARGV group, consumer, lease_ms, max_n,
     * move limit, read ('1'|'0'). The non-blocking part of fetch in one script: 1. XAUTOCLAIM entries idle >=
     * lease_ms (with their delivery counts from XPENDING), 2. due delayed retries back into the streams, 3. with
     * read = '1', XREADGROUP of new entries (the client reads large batches itself: entries passed through Lua cost
     * about twice as much server time as a plain XREADGROUP).
     * Commands that fail when the group is gone (NOGROUP) run under pcall: the script then stops there and returns
     * what it claimed so far with the error text, so nothing claimed is left unreturned.
     * Returns {claimed, read, next_due_ms or -1, now_ms, error or ''} with claimed a flat list
     * {topic index (1-based), entry {id, fields}, delivery count, ...} and read the XREADGROUP reply (nil: none). */
    [NQ_LUA_FETCH] = NQ__LUA_NOW
    "local T = #KEYS / 2\n"
    "local g, cons, lease, maxn, lim = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local claimed, n = {}, 0\n"
    "for i = 1, T do\n"
    "  if n >= maxn then break end\n"
    "  local r = redis.pcall('XAUTOCLAIM', KEYS[i], g, cons, lease, '0-0', 'COUNT', maxn - n)\n"
    "  if r.err then return {claimed, false, -1, now, r.err} end\n"
    "  for _, e in ipairs(r[2]) do\n"
    "    if e[2] then\n"
    "      local p = redis.call('XPENDING', KEYS[i], g, e[1], e[1], 1)\n"
    "      local cnt = 2\n"
    "      if p[1] then cnt = p[1][4] end\n"
    "      claimed[#claimed + 1] = i\n"
    "      claimed[#claimed + 1] = e\n"
    "      claimed[#claimed + 1] = cnt\n"
    "      n = n + 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local nd = -1\n"
    "for i = 1, T do\n"
    "  local dk = KEYS[T + i]\n"
    "  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, lim)\n"
    "  for _, m in ipairs(due) do\n"
    "    local p = string.find(m, '\\n', 1, true)\n"
    "    local body = m\n"
    "    if p then body = string.sub(m, p + 1) end\n"
    "    redis.call('XADD', KEYS[i], '*', 'body', body)\n"
    "    redis.call('ZREM', dk, m)\n"
    "  end\n"
    "  local nx = redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')\n"
    "  if #nx == 2 then\n"
    "    local sc = tonumber(nx[2])\n"
    "    if nd < 0 or sc < nd then nd = sc end\n"
    "  end\n"
    "end\n"
    "local rd = false\n"
    "if n < maxn and ARGV[6] == '1' then\n"
    "  local a = {'XREADGROUP', 'GROUP', g, cons, 'COUNT', maxn - n, 'STREAMS'}\n"
    "  for i = 1, T do a[#a + 1] = KEYS[i] end\n"
    "  for i = 1, T do a[#a + 1] = '>' end\n"
    "  rd = redis.pcall(unpack(a))\n"
    "  if type(rd) == 'table' and rd.err then return {claimed, false, nd, now, rd.err} end\n"
    "end\n"
    "return {claimed, rd, nd, now, ''}\n",

    /* COMPLETE: KEYS[1..S]=task streams, then per job j (b = S + 3(j-1)): KEYS[b+1]=results stream,
     * KEYS[b+2]=job hash, KEYS[b+3]=job task hash. ARGV[1]=group, ARGV[2]=S, ARGV[3]=W (6 or 4); per item i
     * (a = 3 + W(i-1)), W = 6: ARGV[a+1]=stream index (0 = no delivery), ARGV[a+2]=job index, ARGV[a+3]=delivery
     * id ('' = none), ARGV[a+4]=task, ARGV[a+5]=status, ARGV[a+6]=result; W = 4 (at most one stream and one job,
     * the common case, and a third fewer arguments): the last four, stream 1 when the id is not ''.
     * Per item: XACK the delivery; when it was still pending (or there is none) append the result and record the
     * task's status as JOB_MARK does (each task counted once with its latest status). The results of one call and
     * job go into one results-stream entry, one "body" field per result in item order (one XADD instead of one
     * per result: a third of the script's time); read_results splits entries into results again. A delivery that is no longer
     * pending (acked, nacked, dead-lettered, completed before) makes the item a no-op, so a repeated item (a retry
     * after a lost reply, a reclaimed duplicate) adds no second result or count. The count changes and results are
     * gathered per job and written at the end: the script runs atomically and its writes reach the AOF and replicas as one
     * MULTI/EXEC, so every item is all or nothing. Every key's type is checked first: a key of a wrong type fails
     * the script before any write.
     * Returns {codes, before}: codes has one character per item: '-' not applied (delivery not pending), '='
     * applied with the status unchanged, 'n' applied to a new task, 'o'/'f'/'d' applied, the status changed from
     * ok/failed/dead ('?' from anything else); before: per job, total, ok, failed, dead as they were. */
    [NQ_LUA_COMPLETE] =
    "local S = tonumber(ARGV[2])\n"
    "local J = (#KEYS - S) / 3\n"
    "local want = {'stream', 'hash', 'hash'}\n"
    "for k = 1, #KEYS do\n"
    "  local w = 'stream'\n"
    "  if k > S then w = want[(k - S - 1) % 3 + 1] end\n"
    "  local t = redis.call('TYPE', KEYS[k]).ok\n"
    "  if t ~= 'none' and t ~= w then\n"
    "    return redis.error_reply('WRONGTYPE key ' .. KEYS[k] .. ' is a ' .. t .. ', not a ' .. w)\n"
    "  end\n"
    "end\n"
    "local g = ARGV[1]\n"
    "local before, delta, res = {}, {}, {}\n"
    "for j = 1, J do\n"
    "  local v = redis.call('HMGET', KEYS[S + 3 * j - 1], 'total', 'ok', 'failed', 'dead')\n"
    "  for x = 1, 4 do before[#before + 1] = tonumber(v[x]) or (x == 1 and -1 or 0) end\n"
    "  delta[j] = {}\n"
    "  res[j] = {'XADD', KEYS[S + 3 * j - 2], '*'}\n"
    "end\n"
    "local codes = {}\n"
    "local W = tonumber(ARGV[3])\n"
    "for i = 1, (#ARGV - 3) / W do\n"
    "  local a, si, j = 3 + W * (i - 1), 1, 1\n"
    "  if W == 6 then\n"
    "    si, j = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])\n"
    "    a = a + 2\n"
    "  end\n"
    "  local live = 1\n"
    "  if ARGV[a + 1] ~= '' then live = redis.call('XACK', KEYS[si], g, ARGV[a + 1]) end\n"
    "  local code = '-'\n"
    "  if live == 1 then\n"
    "    local b, task, st, d = S + 3 * (j - 1), ARGV[a + 2], ARGV[a + 3], delta[j]\n"
    "    local rs = res[j]\n"
    "    rs[#rs + 1] = 'body'\n"
    "    rs[#rs + 1] = ARGV[a + 4]\n"
    "    if redis.call('HSETNX', KEYS[b + 3], task, st) == 1 then\n"
    "      code = 'n'\n"
    "      d[st] = (d[st] or 0) + 1\n"
    "    else\n"
    "      local old = redis.call('HGET', KEYS[b + 3], task)\n"
    "      if old == st then\n"
    "        code = '='\n"
    "      else\n"
    "        redis.call('HSET', KEYS[b + 3], task, st)\n"
    "        d[st] = (d[st] or 0) + 1\n"
    "        d[old] = (d[old] or 0) - 1\n"
    "        code = '?'\n"
    "        if old == 'ok' or old == 'failed' or old == 'dead' then code = string.sub(old, 1, 1) end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  codes[i] = code\n"
    "end\n"
    "for j = 1, J do\n"
    "  if #res[j] > 3 then redis.call(unpack(res[j])) end\n"
    "  for st, n in pairs(delta[j]) do\n"
    "    if n ~= 0 then redis.call('HINCRBY', KEYS[S + 3 * j - 1], st, n) end\n"
    "  end\n"
    "end\n"
    "return {table.concat(codes), before}\n",
};

#endif
