// Package replica keeps a copy of sipcar's call state in Redis, so that a standby sipcar can take
// over the calls of an active one that died: the relay's records (a call's media pairs, dialogs
// and latched peers; a sip binding with its registration) are written by the active's [Writer]
// and read by the standby's [Follower], which takes over when the addresses move to it.
//
// The active never waits for Redis. [Writer.Changed] only notes the name of a record that
// changed; every Config.Batch the writer reads the records noted since (through its [Source]),
// and writes them in one Lua script call, which also appends them to a stream (the replication
// log) and refreshes the active's lease. A record that went is deleted. When Redis cannot be
// reached, the writer says so once in the log and in sipcar_replica_degraded, keeps the names,
// and writes them when Redis is back; when Redis lost its data (a restart without persistence),
// it writes its whole state again. Calls go on either way.
//
// The standby reads the records once, then follows the stream (XREAD), so that its copy lags by
// a batch. It is current while it reads the stream to its end at least every Config.MaxLag and
// Redis holds a complete state; [Follower.Current] says why not otherwise, and a standby that is
// not current refuses to take over.
//
// Fencing: every write carries the writer's term, and the script refuses it unless the term is
// Redis's epoch. [Follower.Takeover] raises the epoch, atomically with checking that the copy
// holds every write made so far, so that the old active's next write fails ([ErrFenced]) and it
// stops: no call has two live copies. Terms are never lower than Redis's clock in milliseconds, so
// that a term taken after Redis lost its data still fences an active that held one before.
//
// Keys, under Config.Prefix in a Redis Cluster hash tag ("{sipcar}:..."): epoch, owner (the
// active's id, expiring unless refreshed), seq and log (the stream), complete (set while Redis
// holds the active's whole state), and r:<record> for each record.
package replica
