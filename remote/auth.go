package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// keys is what one login offers: agent keys first, then key files.
type keys struct {
	signers []ssh.Signer
	tried   []string // each offered key, named for the error message
	skipped []string
	agent   net.Conn // open while signing; closed after the handshake
}

func loadKeys(files []string, useAgent bool) *keys {
	k := &keys{}
	if sock := os.Getenv("SSH_AUTH_SOCK"); useAgent && sock != "" {
		conn, err := net.DialTimeout("unix", sock, 2*time.Second)
		if err != nil {
			k.skipped = append(k.skipped, fmt.Sprintf("ssh-agent at %s: %v", sock, err))
		} else if signers, err := agent.NewClient(conn).Signers(); err != nil {
			conn.Close()
			k.skipped = append(k.skipped, fmt.Sprintf("ssh-agent: %v", err))
		} else {
			k.agent = conn
			for _, s := range signers {
				k.signers = append(k.signers, s)
				k.tried = append(k.tried, "agent key "+describeKey(s.PublicKey()))
			}
		}
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				k.skipped = append(k.skipped, path+" (no such file)")
			} else {
				k.skipped = append(k.skipped, fmt.Sprintf("%s (%v)", path, err))
			}
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			k.skipped = append(k.skipped, path+" (passphrase-protected: add it to ssh-agent)")
			continue
		case err != nil:
			k.skipped = append(k.skipped, fmt.Sprintf("%s (%v)", path, err))
			continue
		}
		k.signers = append(k.signers, s)
		k.tried = append(k.tried, fmt.Sprintf("%s (%s)", path, describeKey(s.PublicKey())))
	}
	return k
}

func (k *keys) methods() []ssh.AuthMethod {
	signers := k.signers
	return []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) { return signers, nil })}
}

func (k *keys) close() {
	if k.agent != nil {
		k.agent.Close()
	}
}

func describeKey(pk ssh.PublicKey) string {
	return strings.TrimPrefix(pk.Type(), "ssh-") + " " + ssh.FingerprintSHA256(pk)
}

// isAuthFailure tells the library's "no method left" error from network
// and protocol failures.
func isAuthFailure(err error) bool {
	return err != nil && strings.Contains(err.Error(), "unable to authenticate")
}
