// Package scheduler runs the appliance's work: a Runner that queues jobs
// and runs them with bounded concurrency (never two backup jobs of one
// server at once), and a Scheduler that turns enabled policies into
// automatic backup jobs at their execution times and applies retention
// after each successful automatic backup. Time comes from a Clock, so tests
// drive the schedule with a FakeClock and never sleep.
package scheduler
