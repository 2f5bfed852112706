package bundle

import (
	"debug/elf"
	"errors"
	"fmt"
)

// ErrWrongPlatform is wrapped by Prepare's error when the libraries are
// built for another OS or CPU than the one the bundle is prepared for.
var ErrWrongPlatform = errors.New("built for another platform")

// ErrNotLlama is wrapped by Prepare's error when the library named
// libllama is not llama.cpp's.
var ErrNotLlama = errors.New("not llama.cpp's library")

// llamaSymbols are functions llama.cpp's libllama exports (old and new
// names of the model loader, and the backend setup every version has): a
// library exporting none of them is not llama.cpp, whatever its name.
var llamaSymbols = []string{"llama_model_load_from_file", "llama_load_model_from_file", "llama_backend_init"}

// checkLibllama refuses an ELF library that exports none of llamaSymbols.
// A file with ELF headers and no sections at all (no real library: the
// stubs tests use) has nothing to check; Mach-O libraries are not checked.
func checkLibllama(path, name string) error {
	f, err := elf.Open(path)
	if err != nil {
		return nil // not ELF: platform() has the say
	}
	defer f.Close()
	if len(f.Sections) == 0 {
		return nil
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return fmt.Errorf("%s exports no functions (%w): it is not llama.cpp's libllama; give a directory or archive of a llama.cpp build", name, ErrNotLlama)
	}
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF || elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		for _, want := range llamaSymbols {
			if s.Name == want {
				return nil
			}
		}
	}
	return fmt.Errorf("%s does not export llama.cpp's functions (%s): %w; give a directory or archive of a llama.cpp build", name, llamaSymbols[0], ErrNotLlama)
}

// checkPlatform refuses libraries built for another platform than want
// ("linux/amd64"; "" accepts any).
func checkPlatform(m *Manifest, want string) error {
	if want == "" || m.OS+"/"+m.Arch == want {
		return nil
	}
	return fmt.Errorf("the libraries are built for %s/%s and this hive runs %s (%w): install a %s build of llama.cpp there", m.OS, m.Arch, want, ErrWrongPlatform, want)
}
