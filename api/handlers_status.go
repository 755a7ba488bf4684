package api

import (
	"context"
	"net/http"
	"time"
)

// Status is the answer of GET /v1/status.
type Status struct {
	Version           string    `json:"version"`
	Region            string    `json:"region"`
	AvailabilityZones []string  `json:"availability_zones"`
	Project           string    `json:"project"`
	Admin             bool      `json:"admin"`
	Started           time.Time `json:"started"`
	UptimeSeconds     int64     `json:"uptime_seconds"`
	JobsQueued        int       `json:"jobs_queued"`
	JobsRunning       int       `json:"jobs_running"`
	Store             any       `json:"store,omitempty"`
}

func (s *Server) status(ctx context.Context, p principal, _ *http.Request) (any, error) {
	q, r := s.Runner.Active()
	st := Status{
		Version: s.Version, Region: s.Region, AvailabilityZones: s.AZs,
		Project: p.project.Name, Admin: p.admin, Started: s.Started.UTC(),
		UptimeSeconds: int64(s.Clock.Now().Sub(s.Started).Seconds()),
		JobsQueued:    q, JobsRunning: r,
	}
	if s.Status != nil {
		s.Status(ctx, &st)
	}
	return st, nil
}

func secondsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
