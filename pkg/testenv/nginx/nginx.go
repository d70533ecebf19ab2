// Package nginx runs a real nginx (Debian's nginx-light, installed by
// scripts/test-services.sh) as a reverse proxy in front of a service under test, so that
// what PulseBoard does behind a proxy (client addresses from X-Forwarded-For, bodies and
// streams passed through) is tested against the proxy operators deploy rather than
// against Go's own httputil.ReverseProxy. It never skips: without nginx the test fails.
package nginx

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// Proxy is a running nginx.
type Proxy struct {
	// URL is http://127.0.0.1:<port> of the proxy's server block.
	URL string
	// Addr is its host:port.
	Addr string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	dir  string
	// waitErr is the master's exit status, set before exited is closed.
	waitErr error
}

// Options configure the server block.
type Options struct {
	// Locations is the body of the server block (location blocks, directives), with
	// {{.Upstream}} available as a template variable. Empty: DefaultLocations.
	Locations string
	// Upstream is the proxied origin, host:port.
	Upstream string
	// Server, when set, replaces the whole server block (and the map of
	// $connection_upgrade that DefaultLocations uses): a configuration file of the
	// http context as operators deploy it (deploy/nginx/pulseboard.conf), with
	// {{.Listen}} where its listen directive takes the address nginx must listen on.
	// Locations and Upstream are then unused.
	Server string
}

// DefaultLocations proxies everything to the upstream the way production configs do:
// the client address appended to X-Forwarded-For ($proxy_add_x_forwarded_for), the
// original Host kept, HTTP/1.1 with keep-alive to the upstream, request bodies streamed
// rather than spooled, and WebSocket upgrades and SSE passed through unbuffered.
const DefaultLocations = `
	location / {
		proxy_pass http://{{.Upstream}};
		proxy_http_version 1.1;
		proxy_set_header Host $http_host;
		proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
		proxy_set_header X-Forwarded-Proto $scheme;
		proxy_set_header Upgrade $http_upgrade;
		proxy_set_header Connection $connection_upgrade;
		proxy_request_buffering off;
		proxy_buffering off;
		proxy_read_timeout 1h;
	}
`

const confTemplate = `
worker_processes 1;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path {{.Dir}}/body;
	proxy_temp_path {{.Dir}}/proxy;
	fastcgi_temp_path {{.Dir}}/fastcgi;
	uwsgi_temp_path {{.Dir}}/uwsgi;
	scgi_temp_path {{.Dir}}/scgi;
	client_max_body_size 16m;
{{if .Server}}{{.Server}}{{else}}
	map $http_upgrade $connection_upgrade {
		default upgrade;
		''      '';
	}
	server {
		listen 127.0.0.1:{{.Port}};
		{{.Locations}}
	}
{{end}}
}
`

// Binary is the nginx executable: $PULSEBOARD_NGINX, else nginx on PATH, else
// /usr/sbin/nginx (Debian's, which is not on a non-root PATH).
func Binary() (string, error) {
	if b := os.Getenv("PULSEBOARD_NGINX"); b != "" {
		return b, nil
	}
	if b, err := exec.LookPath("nginx"); err == nil {
		return b, nil
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", nil
	}
	return "", fmt.Errorf("nginx not found: run scripts/test-services.sh (it installs Debian's nginx-light) or set PULSEBOARD_NGINX")
}

// Start runs nginx in front of o.Upstream until the test ends.
func Start(t testing.TB, o Options) *Proxy {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	if o.Locations == "" {
		o.Locations = DefaultLocations
	}
	dir := t.TempDir()
	// Workers run as nobody when the master is root: they must be able to use the
	// temporary directories.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	locs, err := render(o.Locations, map[string]string{"Upstream": o.Upstream})
	if err != nil {
		t.Fatalf("nginx locations: %v", err)
	}
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		server := ""
		if o.Server != "" {
			if server, err = render(o.Server, map[string]string{"Listen": net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}); err != nil {
				t.Fatalf("nginx server block: %v", err)
			}
		}
		conf, err := render(confTemplate, map[string]string{"Dir": dir, "Port": strconv.Itoa(port), "Locations": locs, "Server": server})
		if err != nil {
			t.Fatalf("nginx config: %v", err)
		}
		confPath := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		p := &Proxy{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: &bytes.Buffer{}, dir: dir}
		p.URL = "http://" + p.Addr
		p.cmd = exec.Command(bin, "-p", dir, "-c", confPath)
		p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("starting nginx: %v", err)
		}
		// exited is closed when nginx has exited (waitErr set), so that any number of
		// readers see it.
		exited := make(chan struct{})
		go func() { p.waitErr = p.cmd.Wait(); close(exited) }()
		if lastErr = p.waitListening(exited, 10*time.Second); lastErr == nil {
			t.Cleanup(func() {
				// SIGQUIT is nginx's graceful stop; the whole group goes with SIGKILL
				// if it has not stopped in time.
				_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGQUIT)
				select {
				case <-exited:
				case <-time.After(5 * time.Second):
					_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
					<-exited
				}
			})
			return p
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		lastErr = fmt.Errorf("%w\n%s%s", lastErr, p.log.String(), errLog)
	}
	t.Fatalf("nginx did not start: %v", lastErr)
	return nil
}

// ErrorLog is what nginx has written to its error log so far.
func (p *Proxy) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
	return string(b)
}

func (p *Proxy) waitListening(exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("nginx exited: %v", p.waitErr)
		default:
		}
		if c, err := net.DialTimeout("tcp", p.Addr, 200*time.Millisecond); err == nil {
			c.Close()
			// Something answers; make sure it is this nginx and not another process that
			// took the port first (nginx then exits at once, unable to bind).
			select {
			case <-exited:
				return fmt.Errorf("nginx exited: %v", p.waitErr)
			case <-time.After(100 * time.Millisecond):
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nginx not listening on %s after %s", p.Addr, timeout)
}

func render(text string, data any) (string, error) {
	tpl, err := template.New("nginx").Parse(text)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := tpl.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
