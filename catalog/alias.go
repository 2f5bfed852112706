package catalog

import (
	"errors"
	"fmt"
)

// MaxAlias is the longest alias a model may have.
const MaxAlias = 64

// ErrBadAlias is wrapped by ValidAlias's errors.
var ErrBadAlias = errors.New("bad alias")

// ValidAlias checks a model alias: 1 to 64 ASCII letters, digits, '.', '_'
// and '-', starting with a letter or a digit. Aliases name models in
// commands, tables and logs, so none may look like a path ("../x",
// "/etc/passwd"), a model id ("sha256:…"), an option ("-x"), or carry
// control characters.
func ValidAlias(alias string) error {
	if alias == "" || len(alias) > MaxAlias {
		return fmt.Errorf("alias %.80q: %w: use 1 to %d characters", alias, ErrBadAlias, MaxAlias)
	}
	for i := 0; i < len(alias); i++ {
		c := alias[i]
		letterOrDigit := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !letterOrDigit {
			return fmt.Errorf("alias %q: %w: start with a letter or a digit", alias, ErrBadAlias)
		}
		if !letterOrDigit && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("alias %q: %w: use only letters, digits, '.', '_' and '-'", alias, ErrBadAlias)
		}
	}
	return nil
}
