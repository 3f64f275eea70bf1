// Peer for `lameduck run` and `start_server`: the Go net/http server with
// Server.Shutdown on SIGTERM (bench/peers/go-shutdown, the pattern of the
// articles), plus what a supervisor needs: the listening socket from fd 3
// (LISTEN_FDS/LISTEN_PID, the systemd protocol) or from start_server's
// SERVER_STARTER_PORT, and READY=1 on NOTIFY_SOCKET.
//
// CLOSE_DELAY=500ms (optional): on SIGTERM, first answer every request
// with `Connection: close` for that long, then Shutdown; see BENCHMARKS.md
// ("what a server does") for why.
//
//	go build -o go-run-peer . && lameduck run --listen 127.0.0.1:8080 -- ./go-run-peer
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := "127.0.0.1:0"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from go\n")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "slept %d ms\n", ms)
	})
	ln, err := listener(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The lame duck (CLOSE_DELAY only): while stopping, each response
	// says `Connection: close`, so a keep-alive client learns to reconnect
	// from the answer instead of from a closed socket.
	var stopping atomic.Bool
	closeDelay, _ := time.ParseDuration(os.Getenv("CLOSE_DELAY"))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: handler}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-sigs
		if closeDelay > 0 {
			stopping.Store(true)
			time.Sleep(closeDelay)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	ready()
	fmt.Fprintf(os.Stderr, "go peer: ready, listening on http://%s\n", ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-done
}

// listener takes the socket a supervisor passed: fd 3 when LISTEN_PID is
// this process (systemd, lameduck run), or the first of start_server's
// SERVER_STARTER_PORT ("HOST:PORT=FD;..."); otherwise it binds addr.
func listener(addr string) (net.Listener, error) {
	fd := 0
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") != "" {
		fd = 3
	} else if p, ok := os.LookupEnv("SERVER_STARTER_PORT"); ok {
		first := strings.Split(p, ";")[0]
		fd, _ = strconv.Atoi(first[strings.LastIndex(first, "=")+1:])
	}
	if fd < 3 {
		return net.Listen("tcp", addr)
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	return net.FileListener(f)
}

// ready says READY=1 on NOTIFY_SOCKET (sd_notify), when there is one.
func ready() {
	if path := os.Getenv("NOTIFY_SOCKET"); path != "" {
		if c, err := net.Dial("unixgram", path); err == nil {
			c.Write([]byte("READY=1"))
			c.Close()
		}
	}
}
