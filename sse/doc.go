// Package sse writes and reads Server-Sent Events: rbee's event streams
// (hive → queen → keeper, one rbee.Event per SSE event) and the workers'
// OpenAI streams (data-only). Relay forwards one stream into another — the
// seed's sse-relay.
package sse
