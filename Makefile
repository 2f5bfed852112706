# rbee — see README.md. `make help` lists the targets.
GO         ?= go
DEV        ?= .rbee-dev
ENGINE_DIR ?= $(DEV)/engine/llama-cpu
VULKAN_DIR ?= $(DEV)/engine/llama-vulkan
# RPC=1: make engine also builds llama.cpp's RPC backend and rpc-server
# (needs g++ and git); the demos need neither.
RPC        ?= 1
MODELS_DIR ?= $(DEV)/models
BIN        ?= bin
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X github.com/rbee-dev/rbee.Version=$(VERSION)
TESTFLAGS  ?= -count=1 -timeout 15m
DEADCODE   ?= $(GO) run golang.org/x/tools/cmd/deadcode@v0.52.0

export RBEE_ENGINE ?= $(abspath $(ENGINE_DIR))

.PHONY: help build agents test check bench bench-scale anchors engine engine-vulkan gpu-check models demo worker-demo clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build rbee, rbee-hive (cgo, for NVML) and rbee-worker (pure Go) into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/rbee ./cmd/rbee
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/rbee-hive ./cmd/rbee-hive
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/rbee-worker ./cmd/rbee-worker

agents: build ## Cross-build the agent and worker for linux/arm64 into bin/agents/ (needs gcc-aarch64-linux-gnu)
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=aarch64-linux-gnu-gcc $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/agents/linux-arm64/rbee-hive ./cmd/rbee-hive
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/agents/linux-arm64/rbee-worker ./cmd/rbee-worker

test: engine engine-vulkan ## Run every test (needs the engine bundles, fetched if missing, and a Vulkan driver: Mesa's llvmpipe)
	RBEE_TEST_VULKAN_ENGINE=$(abspath $(VULKAN_DIR)) $(GO) test $(TESTFLAGS) ./...

check: ## gofmt, go vet, go mod tidy and deadcode must leave nothing to change
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^third_party/')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	@# Code no binary reaches is deleted; the test harnesses are for tests.
	@out=$$($(DEADCODE) ./... | grep -Ev '^(internal/(sshtest|testenv|testmodel|gguf)|download/hubtest|gpu/gputest|enginefetch/npmtest)/'); \
		if [ -n "$$out" ]; then echo "deadcode: unreachable code:"; echo "$$out"; exit 1; fi

bench: engine engine-vulkan models anchors ## Benchmarks: rbee-worker vs llama-server (ratios), vs in-process yzma, Vulkan (llvmpipe) vs CPU, warm overhead through queen+hive, catalogs, bundles
	RBEE_TEST_VULKAN_ENGINE=$(abspath $(VULKAN_DIR)) RBEE_BENCH_MODELS=$(abspath $(MODELS_DIR)) RBEE_BENCH_ANCHORS=$(abspath $(DEV)/anchors) $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./worker/ ./e2e/
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./bundle/ ./catalog/ ./modelfile/ ./sse/ ./gpu/ ./remote/ ./download/ ./inventory/

bench-scale: ## rbee up on HOSTS fresh sshd hosts of this machine (default 50): cold and warm up, rbee ps, the queen's peak RSS, bytes per host
	RBEE_BENCH_HOSTS=$(or $(HOSTS),50) RBEE_ENGINE=$(abspath $(ENGINE_DIR)) $(GO) test -run '^$$' -bench BenchmarkScale -benchtime 1x -count 1 -timeout 30m -v ./e2e/

anchors: ## Build llama.cpp's llama-server and llama-bench (CPU) from node-llama-cpp@3.22.1's source bundle into $(DEV)/anchors (needs cmake, g++)
	./scripts/anchors.sh $(DEV)/anchors $(DEV)/cache

engine: ## Get the llama.cpp CPU engine bundle (npm registry) into $(ENGINE_DIR), with the RPC backend and rpc-server built from its source (RPC=0: without)
	$(GO) run ./internal/cmd/getengine -out $(ENGINE_DIR) -cache $(DEV)/cache $(if $(filter 1,$(RPC)),-rpc ./scripts/rpc.sh)

gpu-check: build ## On a machine with an NVIDIA GPU: install the CUDA bundle as a hive does, run a worker on gpu0, compare NVML with the engine, tokens/s (scripts/gpu-check.sh)
	./scripts/gpu-check.sh

engine-vulkan: ## Get the llama.cpp Vulkan engine bundle (npm registry) into $(VULKAN_DIR): tests run it on Mesa's llvmpipe
	$(GO) run ./internal/cmd/getengine -gpu vulkan -out $(VULKAN_DIR) -cache $(DEV)/cache

models: engine ## Write the generated models into $(MODELS_DIR)
	$(GO) run ./internal/cmd/mkmodels -out $(MODELS_DIR) -engine $(ENGINE_DIR)

demo: build ## rbee infer on this machine (the default hive): the alphabet model continues "abc"
	@$(MAKE) --no-print-directory engine RPC=0
	$(GO) run ./internal/cmd/mkmodels -out $(MODELS_DIR) -only alphabet
	@echo '$$ rbee infer --model $(MODELS_DIR)/alphabet.gguf --temperature 0 abc' >&2
	@RBEE_HOME=$(abspath $(DEV))/home RBEE_QUEEN=127.0.0.1:7834 $(BIN)/rbee infer --model $(MODELS_DIR)/alphabet.gguf --temperature 0 abc; \
		rc=$$?; RBEE_HOME=$(abspath $(DEV))/home RBEE_QUEEN=127.0.0.1:7834 $(BIN)/rbee queen stop >&2; exit $$rc

worker-demo: build ## Start rbee-worker alone on the alphabet model and stream its OpenAI answer
	@$(MAKE) --no-print-directory engine RPC=0
	$(GO) run ./internal/cmd/mkmodels -out $(MODELS_DIR) -only alphabet
	./scripts/demo.sh $(BIN)/rbee-worker $(MODELS_DIR)/alphabet.gguf $(ENGINE_DIR)

clean: ## Remove bin/ (keeps the engine and models in .rbee-dev/)
	rm -rf $(BIN)
