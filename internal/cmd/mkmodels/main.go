package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/gguf"
	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/llm"
)

func main() {
	out := flag.String("out", ".rbee-dev/models", "directory to write models into")
	engine := flag.String("engine", ".rbee-dev/engine/llama-cpu", "engine bundle (for quantizing)")
	only := flag.String("only", "alphabet,small,bench", "comma-separated sets: alphabet, small, bench")
	force := flag.Bool("force", false, "rewrite models that exist")
	flag.Parse()
	if err := run(*out, *engine, strings.Split(*only, ","), *force); err != nil {
		fmt.Fprintf(os.Stderr, "mkmodels: %v\n", err)
		os.Exit(1)
	}
}

func run(out, engine string, sets []string, force bool) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	write := func(name string, build func() *gguf.File) (string, error) {
		path := filepath.Join(out, name)
		if _, err := os.Stat(path); err == nil && !force {
			fmt.Fprintf(os.Stderr, "exists  %s\n", path)
			return path, nil
		}
		start := time.Now()
		if err := build().WriteFile(path); err != nil {
			return "", err
		}
		fmt.Fprintf(os.Stderr, "wrote   %s (%s)\n", path, time.Since(start).Round(time.Millisecond))
		return path, nil
	}
	for _, set := range sets {
		switch strings.TrimSpace(set) {
		case "alphabet":
			if _, err := write("alphabet.gguf", testmodel.Alphabet); err != nil {
				return err
			}
		case "small":
			if _, err := write(testmodel.Small.Name+".gguf", func() *gguf.File { return testmodel.Random(testmodel.Small) }); err != nil {
				return err
			}
		case "bench":
			f32, err := write(testmodel.Bench.Name+"-f32.gguf", func() *gguf.File { return testmodel.Random(testmodel.Bench) })
			if err != nil {
				return err
			}
			eng, err := llm.Load(engine)
			if err != nil {
				return err
			}
			for _, q := range []string{"Q8_0", "Q4_K_M"} {
				path := filepath.Join(out, testmodel.Bench.Name+"-"+strings.ToLower(q)+".gguf")
				if _, err := os.Stat(path); err == nil && !force {
					fmt.Fprintf(os.Stderr, "exists  %s\n", path)
					continue
				}
				start := time.Now()
				if err := eng.Quantize(f32, path, q); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "wrote   %s (%s)\n", path, time.Since(start).Round(time.Millisecond))
			}
		case "":
		default:
			return fmt.Errorf("unknown set %q (want alphabet, small, bench)", set)
		}
	}
	return nil
}
