// Package gputest builds a fake NVML library so that tests can detect GPUs
// on machines that have none. The fake is a small C shared library, compiled
// with the host's C compiler and loaded by go-nvml like the real
// libnvidia-ml.so.1; its GPUs and failures come from environment variables.
package gputest
