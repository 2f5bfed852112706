// Package door is the queen's OpenAI-compatible front door: the routes,
// the router that sends each request to a ready replica and queues it when
// every slot is taken, the deployments that keep replicas loaded, API key
// limits, the metrics, the request log and rbee ps. It reaches the hives
// only through its Fleet interface, so its routing is tested without a
// process.
package door
