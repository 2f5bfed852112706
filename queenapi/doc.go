// Package queenapi is the queen's wire API: the types of its control plane
// (jobs, hives, models, engines, workers, stop) and a typed client that
// reaches it over the owner-only unix socket, or over TCP with the bearer
// token for a queen on another machine. The keeper uses nothing else to
// talk to the queen.
package queenapi
