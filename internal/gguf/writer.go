package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// Value types of the GGUF format (version 3).
const (
	typeUint8   uint32 = 0
	typeInt32   uint32 = 5
	typeUint32  uint32 = 4
	typeFloat32 uint32 = 6
	typeBool    uint32 = 7
	typeString  uint32 = 8
	typeArray   uint32 = 9
	typeUint64  uint32 = 10
)

// ggmlTypeF32 is ggml's tensor type id for 32-bit floats.
const ggmlTypeF32 uint32 = 0

// Alignment is the data alignment the writer uses (GGUF's default).
const Alignment = 32

type kv struct {
	key   string
	write func(w *encoder)
}

type tensor struct {
	name    string
	dims    []uint64
	data    []float32
	virtual bool // described in the header only; the file ends before its data
}

// File is a GGUF file being assembled in memory. Add metadata and tensors in
// the order they should appear, then call WriteFile.
type File struct {
	kvs     []kv
	tensors []tensor
	names   map[string]bool
	err     error
}

// New returns an empty File.
func New() *File { return &File{names: map[string]bool{}} }

func (f *File) addKV(key string, write func(*encoder)) {
	if f.names["kv:"+key] {
		f.err = errors.Join(f.err, fmt.Errorf("duplicate key %q", key))
		return
	}
	f.names["kv:"+key] = true
	f.kvs = append(f.kvs, kv{key: key, write: write})
}

// String adds a string value.
func (f *File) String(key, v string) {
	f.addKV(key, func(e *encoder) { e.u32(typeString); e.str(v) })
}

// Uint32 adds an unsigned 32-bit value.
func (f *File) Uint32(key string, v uint32) {
	f.addKV(key, func(e *encoder) { e.u32(typeUint32); e.u32(v) })
}

// Float32 adds a 32-bit float value.
func (f *File) Float32(key string, v float32) {
	f.addKV(key, func(e *encoder) { e.u32(typeFloat32); e.u32(math.Float32bits(v)) })
}

// Bool adds a boolean value.
func (f *File) Bool(key string, v bool) {
	f.addKV(key, func(e *encoder) {
		e.u32(typeBool)
		if v {
			e.u8(1)
		} else {
			e.u8(0)
		}
	})
}

// Strings adds an array of strings.
func (f *File) Strings(key string, v []string) {
	f.addKV(key, func(e *encoder) {
		e.u32(typeArray)
		e.u32(typeString)
		e.u64(uint64(len(v)))
		for _, s := range v {
			e.str(s)
		}
	})
}

// Float32s adds an array of 32-bit floats.
func (f *File) Float32s(key string, v []float32) {
	f.addKV(key, func(e *encoder) {
		e.u32(typeArray)
		e.u32(typeFloat32)
		e.u64(uint64(len(v)))
		for _, x := range v {
			e.u32(math.Float32bits(x))
		}
	})
}

// Int32s adds an array of signed 32-bit integers.
func (f *File) Int32s(key string, v []int32) {
	f.addKV(key, func(e *encoder) {
		e.u32(typeArray)
		e.u32(typeInt32)
		e.u64(uint64(len(v)))
		for _, x := range v {
			e.u32(uint32(x))
		}
	})
}

// Tensor adds an F32 tensor. dims are in ggml order: dims[0] is the
// contiguous (row) dimension. len(data) must equal the product of dims.
func (f *File) Tensor(name string, dims []uint64, data []float32) {
	n := uint64(1)
	for _, d := range dims {
		n *= d
	}
	switch {
	case f.names["t:"+name]:
		f.err = errors.Join(f.err, fmt.Errorf("duplicate tensor %q", name))
	case n != uint64(len(data)):
		f.err = errors.Join(f.err, fmt.Errorf("tensor %q: dims %v need %d values, got %d", name, dims, n, len(data)))
	default:
		f.names["t:"+name] = true
		f.tensors = append(f.tensors, tensor{name: name, dims: dims, data: data})
	}
}

// VirtualTensor adds an F32 tensor to the header only: the file ends before
// its data. Such a file cannot be loaded, but its header describes a model
// of any size — what tests of header-only memory estimates need.
func (f *File) VirtualTensor(name string, dims []uint64) {
	if f.names["t:"+name] {
		f.err = errors.Join(f.err, fmt.Errorf("duplicate tensor %q", name))
		return
	}
	f.names["t:"+name] = true
	f.tensors = append(f.tensors, tensor{name: name, dims: dims, virtual: true})
}

// WriteTo writes the file in GGUF v3 format.
func (f *File) WriteTo(w io.Writer) (int64, error) {
	if f.err != nil {
		return 0, fmt.Errorf("gguf: %w", f.err)
	}
	e := &encoder{w: bufio.NewWriterSize(w, 1<<20)}
	e.raw([]byte("GGUF"))
	e.u32(3)
	e.u64(uint64(len(f.tensors)))
	e.u64(uint64(len(f.kvs)))
	for _, kv := range f.kvs {
		e.str(kv.key)
		kv.write(e)
	}
	var off uint64
	for _, t := range f.tensors {
		e.str(t.name)
		e.u32(uint32(len(t.dims)))
		for _, d := range t.dims {
			e.u64(d)
		}
		e.u32(ggmlTypeF32)
		e.u64(off)
		n := uint64(len(t.data))
		if t.virtual {
			n = 1
			for _, d := range t.dims {
				n *= d
			}
		}
		off = alignUp(off+n*4, Alignment)
	}
	e.pad()
	for _, t := range f.tensors {
		if t.virtual {
			break // header only from here on
		}
		buf := make([]byte, 4*1024)
		for i := 0; i < len(t.data); {
			n := 0
			for ; n < len(buf) && i < len(t.data); n, i = n+4, i+1 {
				binary.LittleEndian.PutUint32(buf[n:], math.Float32bits(t.data[i]))
			}
			e.raw(buf[:n])
		}
		e.pad()
	}
	if e.err == nil {
		e.err = e.w.Flush()
	}
	return e.n, e.err
}

// WriteFile writes the file to path atomically (temporary file, then rename),
// so an interrupted run never leaves a truncated model behind.
func (f *File) WriteFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write gguf: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write gguf: %w", err)
	}
	if _, err := f.WriteTo(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write gguf %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write gguf %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write gguf: %w", err)
	}
	return nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

type encoder struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(b)
	e.n += int64(n)
	e.err = err
}

func (e *encoder) u8(v uint8) { e.raw([]byte{v}) }

func (e *encoder) u32(v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	e.raw(b[:])
}

func (e *encoder) u64(v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	e.raw(b[:])
}

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.raw([]byte(s))
}

func (e *encoder) pad() {
	if r := uint64(e.n) % Alignment; r != 0 {
		e.raw(make([]byte, Alignment-r))
	}
}
