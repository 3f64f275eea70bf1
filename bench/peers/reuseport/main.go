// Peer for the restart-under-load benchmark: the naive SO_REUSEPORT
// hand-over. Each generation binds its own listening socket on the same
// port with SO_REUSEPORT; to restart, start a new instance, wait for its
// ready line, then SIGTERM the old one, which runs net/http's
// Server.Shutdown. Connections the kernel had already queued on the old
// socket's accept queue when it closes are reset: that is what the
// benchmark measures.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// SO_REUSEPORT on Linux (not in package syscall on every platform).
const soReusePort = 15

func main() {
	addr := "127.0.0.1:8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	lc := net.ListenConfig{
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reuseport peer:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello\n")
	})
	srv := &http.Server{Handler: mux}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "reuseport peer: shutdown:", err)
		}
		close(done)
	}()
	fmt.Fprintf(os.Stderr, "reuseport peer: ready, listening on http://%s\n", ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "reuseport peer:", err)
		os.Exit(1)
	}
	<-done
}
