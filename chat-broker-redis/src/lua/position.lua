-- The room's position (after the epoch prologue). Returns {epoch, seq}.
return {epoch, redis.call('GET', KEYS[2]) or '0'}
