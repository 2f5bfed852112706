package worker_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
)

// BenchmarkVulkanVsCPU runs the ~3M model (F32) on llama.cpp's Vulkan
// backend — Mesa's llvmpipe, a CPU behind the Vulkan API — and on the CPU
// backend, one worker at a time, same prompt and token count: a figure
// (llvmpipe is a CPU), proof that the Vulkan path serves, not a goal.
// make bench runs it (it needs make models and make engine-vulkan).
func BenchmarkVulkanVsCPU(b *testing.B) {
	dir := os.Getenv("RBEE_BENCH_MODELS")
	if dir == "" {
		b.Skip("RBEE_BENCH_MODELS is not set; run `make bench`")
	}
	vk, err := testenv.VulkanEngineDir()
	if err != nil {
		b.Fatal(err)
	}
	// The small model: llvmpipe compiles every shader a model's tensor
	// types need on its first request (minutes for the 75M Q4_K_M one).
	model := filepath.Join(dir, "random-3m.gguf")
	if _, err := os.Stat(model); err != nil {
		b.Fatalf("%v: run `make models`", err)
	}
	for range b.N {
		// Shaders compiled once here, kept for the measured runs.
		env := []string{"GGML_VK_VISIBLE_DEVICES=0", "MESA_SHADER_CACHE_DIR=" + b.TempDir()}
		var vkT, cpuT []timing
		for range 2 {
			vkT = append(vkT, deviceRuns(b, vk, model, "Vulkan0", env)...)
			cpuT = append(cpuT, deviceRuns(b, engineDir, model, "cpu", nil)...)
		}
		v, c := median(vkT), median(cpuT)
		b.ReportMetric(v.genRate(), "vulkan_gen_tok/s")
		b.ReportMetric(c.genRate(), "cpu_gen_tok/s")
		b.ReportMetric(v.promptRate(), "vulkan_prompt_tok/s")
		b.ReportMetric(c.promptRate(), "cpu_prompt_tok/s")
		b.ReportMetric(v.genRate()/c.genRate(), "vulkan/cpu_gen")
		b.ReportMetric(0, "ns/op")
	}
}

// deviceRuns starts a worker of engine on device, warms it up, and runs
// benchRuns streamed generations.
func deviceRuns(b *testing.B, engine, model, device string, env []string) []timing {
	p := testenv.Start(b, workerBin, env, "--engine", engine, "--model", model, "--device", device,
		"--threads", fmt.Sprint(benchThreads()), "--ctx-size", "1024", "--slots", "1")
	defer p.Stop(30 * time.Second)
	ln, err := p.Next("listening", 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Next("ready", 120*time.Second); err != nil {
		b.Fatal(err)
	}
	url := "http://" + ln["address"].(string)
	streamOnce(b, url) // warm-up: on Vulkan, the shaders compile here
	var ts []timing
	for range benchRuns {
		ts = append(ts, streamOnce(b, url))
	}
	return ts
}
