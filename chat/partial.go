package chat

import "encoding/json"

// CallDelta is a piece of a call as it is generated, in the order OpenAI
// streams calls: a call's first delta has its ID and Name (and no
// arguments yet), the next ones pieces of its arguments (compact JSON).
type CallDelta struct {
	Index     int
	ID, Name  string // in the call's first delta only
	Arguments string
}

// callScanner follows the JSON of a model's calls as it comes, without
// waiting for the whole: an object with a "name" string is a call, and
// the value of its "arguments" (or Llama 3's "parameters") an object whose
// bytes, white space outside strings left out, are its arguments. Text
// between JSON values (tags, separators) is skipped.
type callScanner struct {
	f      Format
	frames []*frame // the containers open, outermost first
	// The string or key being read, and what it is for.
	inStr, esc bool
	str        []byte
	strFor     *frame // the call frame whose key or name this string is, nil when none
	isKey      bool
	calls      []*scanCall
	sent       int // calls whose first delta went out
}

// frame is an open object or array.
type frame struct {
	obj     bool
	key     string    // the object's last key read
	call    *scanCall // the call this object is, once it has a "name"
	args    *scanCall // this container is (inside) the arguments of a call
	wantVal bool      // a key and its colon were read: a value comes
}

type scanCall struct {
	id, name  string
	args      []byte // compact, as far as read
	sentArgs  int    // bytes of args given out
	argsOpen  bool   // the arguments object is being read
	argsDone  bool
	stringArg bool // the arguments are a JSON string: given whole at the end
}

// feed reads b and returns the deltas it completes.
func (s *callScanner) feed(b string, newID func() string) []CallDelta {
	for i := 0; i < len(b); i++ {
		s.byte(b[i])
	}
	var out []CallDelta
	for i, c := range s.calls {
		if c.name == "" {
			continue
		}
		if i >= s.sent {
			if i > s.sent {
				break // calls go out in order
			}
			c.id = newID()
			out = append(out, CallDelta{Index: i, ID: c.id, Name: c.name})
			s.sent++
		}
		if len(c.args) > c.sentArgs {
			out = append(out, CallDelta{Index: i, Arguments: string(c.args[c.sentArgs:])})
			c.sentArgs = len(c.args)
		}
		if c.stringArg {
			break // its arguments come whole at the end: the next calls wait for them
		}
	}
	return out
}

func (s *callScanner) top() *frame {
	if len(s.frames) == 0 {
		return nil
	}
	return s.frames[len(s.frames)-1]
}

// argsOf is the call whose arguments the current position is in.
func (s *callScanner) argsOf() *scanCall {
	if t := s.top(); t != nil {
		return t.args
	}
	return nil
}

func (s *callScanner) byte(c byte) {
	if a := s.argsOf(); a != nil && !s.inStr && (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
		return // insignificant white space inside the arguments
	}
	if a := s.argsOf(); a != nil {
		a.args = append(a.args, c)
	}
	if s.inStr {
		s.stringByte(c)
		return
	}
	t := s.top()
	switch c {
	case '"':
		if t == nil {
			return // text between JSON values
		}
		s.inStr, s.esc, s.str = true, false, s.str[:0]
		s.strFor, s.isKey = nil, false
		if t != nil && t.obj && t.args == nil {
			s.strFor = t
			s.isKey = !t.wantVal
		}
		if t.obj && t.wantVal && t.args == nil && (t.key == "arguments" || t.key == "parameters") && t.call != nil && !t.call.argsOpen && !t.call.argsDone {
			t.call.stringArg = true // a JSON string of the object: given whole at the end
		}
	case '{', '[':
		f := &frame{obj: c == '{'}
		if t != nil {
			f.args = t.args
			if t.obj && t.wantVal && t.args == nil && (t.key == "arguments" || t.key == "parameters") && c == '{' {
				// The arguments begin: this object and what is in it.
				call := t.call
				if call == nil {
					call = &scanCall{} // the name may come after them
					t.call = call
					s.calls = append(s.calls, call)
				}
				if !call.argsOpen && !call.argsDone {
					call.argsOpen = true
					call.args = append(call.args[:0], '{')
					f.args = call
				}
			}
			t.wantVal = false
		}
		s.frames = append(s.frames, f)
	case '}', ']':
		if t == nil {
			return
		}
		s.frames = s.frames[:len(s.frames)-1]
		if t.args != nil {
			if p := s.top(); p == nil || p.args != t.args {
				t.args.argsOpen, t.args.argsDone = false, true // the arguments object closed
			}
		}
	case ':':
		if t != nil && t.obj {
			t.wantVal = true
		}
	case ',':
		if t != nil {
			t.wantVal = false
		}
	}
}

func (s *callScanner) stringByte(c byte) {
	switch {
	case s.esc:
		s.esc = false
		s.str = append(s.str, '\\', c)
		return
	case c == '\\':
		s.esc = true
		return
	case c != '"':
		s.str = append(s.str, c)
		return
	}
	s.inStr = false
	t := s.strFor
	if t == nil {
		return
	}
	switch {
	case s.isKey:
		t.key, t.wantVal = string(s.str), false
	case t.wantVal && t.key == "name":
		if t.call == nil {
			t.call = &scanCall{}
			s.calls = append(s.calls, t.call)
		}
		if t.call.name == "" {
			t.call.name = unescape(s.str)
		}
		t.wantVal = false
	default:
		t.wantVal = false
	}
}

// unescape reads the text of a JSON string's body (as written, escapes
// kept); one that does not decode is kept as written.
func unescape(b []byte) string {
	var out string
	if err := json.Unmarshal(append(append([]byte{'"'}, b...), '"'), &out); err != nil {
		return string(b)
	}
	return out
}
