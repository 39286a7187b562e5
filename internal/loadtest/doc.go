// Package loadtest is the engine of `labelpipe bench`: it measures labelpipe
// end to end on loopback and, for comparison, a minimal hand-written
// forwarder doing the same work.
//
// One run (Run) starts three fake vendors in this process, each on its own
// 127.0.0.1 port, and then a child process: either the daemon (`labelpipe
// run` with a generated config whose three http sinks point at the fake
// vendors) or the forwarder (`labelpipe bench serve-baseline`, ServeBaseline).
// Running the system under test as a separate process keeps its memory and
// CPU apart from the load driver's, so its peak RSS and CPU time can be read
// from /proc. After one warm-up export has reached every vendor, C senders
// post N issue-exported webhooks; the fake vendors record which issue each
// request carries, so the run can tell when every accepted export reached
// every vendor and count lost and duplicated deliveries.
//
// Everything listens on 127.0.0.1 only; nothing leaves the machine except,
// with the redis broker, the connections to the Redis the caller names.
package loadtest
