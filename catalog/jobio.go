package catalog

// JobRebuildIndex rebuilds the block store's index from its packs'
// footers (csbs store rebuild-index).
const JobRebuildIndex = "rebuild-index"

// JobIO counts the requests a job made to the pack store: for the s3
// backend, PUTs and ranged GETs of pack objects (every attempt, retries
// included; reads served by the local cache are not requests); for the
// local backend, pack files written and reads of them.
type JobIO struct {
	Puts     int64 `json:"puts"`
	PutBytes int64 `json:"put_bytes"`
	Gets     int64 `json:"gets"`
	GetBytes int64 `json:"get_bytes"`
}
