// Package maintenance decides when the store's maintenance jobs (garbage
// collection and scrub) run on their own, and submits them at those
// times.
//
// A Schedule is one of: every fixed interval, counted from when the loop
// starts (so it restarts with the daemon); daily at a wall-clock time in
// a time zone, which survives restarts and follows the policies' rules for
// daylight saving (scheduler.NextRuns); or neither, for by hand only. A
// Timer runs one loop per kind on a scheduler.Clock, so tests drive it
// with a FakeClock and never sleep, and remembers when each kind runs
// next for csbs status.
//
// What a gc or scrub job does is the store's and the job runner's
// business; this package only says when.
package maintenance
