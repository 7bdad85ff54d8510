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
  NQ_LUA_MOVE_DUE, /* delayed ZSET -> stream */
  NQ_LUA_NACK,     /* XACK + (ZADD delayed | XADD now) */
  NQ_LUA_DEAD,     /* XACK + XADD nq:dlq */
  NQ_LUA_REQUEUE,  /* nq:dlq entry -> its topic stream, XDEL */
  NQ_LUA_PURGE,    /* XLEN + DEL nq:dlq */
  NQ_LUA_JOB_MARK, /* task status -> counts, once per task */
  NQ_LUA_TRIM,     /* XTRIM MINID below every group's oldest pending/undelivered entry */
  NQ_LUA_COUNT_AFTER, /* entries after a group's last-delivered-id (depth when XINFO's lag is nil) */
  NQ_LUA_N
};

/* Server time in ms. */
#define NQ__LUA_NOW                              \
  "local tm = redis.call('TIME')\n"              \
  "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"

static const char *const nq_lua_src[NQ_LUA_N] = {
    /* MOVE_DUE: KEYS[1]=delayed zset, KEYS[2]=stream; ARGV[1]=limit. Members are "<uniq>\n<body>".
     * Returns {moved, next_due_ms or -1, now_ms}. */
    [NQ_LUA_MOVE_DUE] = NQ__LUA_NOW
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))\n"
    "for _, m in ipairs(due) do\n"
    "  local p = string.find(m, '\\n', 1, true)\n"
    "  local body = m\n"
    "  if p then body = string.sub(m, p + 1) end\n"
    "  redis.call('XADD', KEYS[2], '*', 'body', body)\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "end\n"
    "local nx = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
    "local nd = -1\n"
    "if #nx == 2 then nd = tonumber(nx[2]) end\n"
    "return {#due, nd, now}\n",

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
};

#endif
