// Package gpu finds the devices a hive can run models on: NVIDIA GPUs through
// NVML (github.com/NVIDIA/go-nvml) and the CPU through /proc. A machine
// without a usable NVML library still reports its CPU, with the reason in
// Report.NVML. The package needs cgo (go-nvml loads libnvidia-ml with
// dlopen), so the hive agent is built with CGO_ENABLED=1.
package gpu
