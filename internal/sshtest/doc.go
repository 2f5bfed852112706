// Package sshtest starts real OpenSSH sshd processes as test hosts on
// loopback (127.0.0.N), each with its own local user, home, host key and
// client key, so rbee's SSH code is tested against the server it meets in
// the field. Everything a test starts is found again by PID and uid and
// removed in t.Cleanup; state left by a crashed test binary is swept by the
// next one. It needs root and openssh-server; Available says what is missing.
package sshtest
