// Package realkafka runs real Apache Kafka brokers for tests, chaos scenarios and
// benchmarks: KRaft-mode JVM processes (each node both controller and broker) on free
// loopback ports, from the Kafka release jars on Maven Central. Nothing is installed: the
// first use of a version resolves its classpath with Maven (pom.xml beside this file) and
// caches it, so later runs need no network. A node can be killed (SIGKILL), stopped
// (SIGTERM, a controlled shutdown), frozen (SIGSTOP) and started again on the same ports
// with the same data.
package realkafka

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
)

// The versions the real-broker tier tests: the newest 4.x release that resolves from
// Maven Central, and the last 3.x line (the protocol versions KIP-896 removed in 4.0 are
// still served there).
const (
	Latest = "4.4.0"
	V3     = "3.9.2"
)

// Versions are the versions the real-broker tier runs; PULSEBOARD_KAFKA_VERSIONS (comma
// separated) overrides them.
func Versions() []string {
	if v := strings.TrimSpace(os.Getenv("PULSEBOARD_KAFKA_VERSIONS")); v != "" {
		return strings.Split(v, ",")
	}
	return []string{Latest, V3}
}

//go:embed pom.xml
var pom []byte

// Options configure a cluster.
type Options struct {
	// Version of Apache Kafka [Latest].
	Version string
	// Nodes is the number of combined controller+broker nodes [1].
	Nodes int
	// HeapMB is each node's maximum heap [256].
	HeapMB int
	// Dir holds the nodes' data, configuration and logs [a new temporary directory,
	// removed by Close].
	Dir string
	// Config adds or overrides broker properties of every node.
	Config map[string]string
	// LogLevel of the brokers' log files (trace, debug, info, warn, error) [warn].
	LogLevel string
}

// Cluster is a running set of nodes.
type Cluster struct {
	Version string
	Nodes   []*Node
	dir     string
	ownDir  bool
}

// Node is one Kafka process (controller and broker).
type Node struct {
	ID int
	// Addr is the broker listener (host:port), fixed across restarts.
	Addr string
	// ControllerAddr is the KRaft controller listener.
	ControllerAddr string
	// LogFile is where the process writes its output.
	LogFile string

	argv []string
	env  []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start formats the nodes' storage and starts them; it returns once every broker is in
// the cluster's metadata.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	c, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitReady(ctx, len(c.Nodes)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Prepare resolves the version's classpath, picks the ports, writes each node's
// configuration and formats its storage, but starts nothing: Node.Start does, or a
// caller that runs processes its own way (the chaos harness) runs Node.Argv.
func Prepare(ctx context.Context, o Options) (*Cluster, error) {
	if o.Version == "" {
		o.Version = Latest
	}
	if o.Nodes <= 0 {
		o.Nodes = 1
	}
	if o.HeapMB <= 0 {
		o.HeapMB = 256
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, fmt.Errorf("realkafka: no java on PATH (Kafka is a JVM program): %w", err)
	}
	cp, err := Classpath(ctx, o.Version)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Version: o.Version, dir: o.Dir}
	if c.dir == "" {
		removeStaleDirs()
		if c.dir, err = os.MkdirTemp("", tempPrefix); err != nil {
			return nil, err
		}
		c.ownDir = true
		if err := os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(2 * o.Nodes)
	if err != nil {
		return nil, err
	}
	var voters []string
	for i := range o.Nodes {
		n := &Node{ID: i + 1, Addr: loopback(ports[2*i]), ControllerAddr: loopback(ports[2*i+1])}
		voters = append(voters, fmt.Sprintf("%d@%s", n.ID, n.ControllerAddr))
		c.Nodes = append(c.Nodes, n)
	}
	clusterID, err := newClusterID()
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		nodeDir := filepath.Join(c.dir, "node-"+strconv.Itoa(n.ID))
		if err := os.MkdirAll(nodeDir, 0o755); err != nil {
			return nil, err
		}
		props := brokerConfig(o, n, strings.Join(voters, ","), filepath.Join(nodeDir, "data"))
		propsFile := filepath.Join(nodeDir, "server.properties")
		if err := os.WriteFile(propsFile, []byte(props), 0o644); err != nil {
			return nil, err
		}
		jvm := []string{
			"-Xms64m", "-Xmx" + strconv.Itoa(o.HeapMB) + "m",
			"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
			"-Djava.awt.headless=true",
			"-Dorg.slf4j.simpleLogger.defaultLogLevel=" + o.LogLevel,
			"-Dorg.slf4j.simpleLogger.showDateTime=true",
			"-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
			"-cp", cp,
		}
		format := exec.CommandContext(ctx, java, append(append([]string{}, jvm...),
			"kafka.tools.StorageTool", "format", "-t", clusterID, "-c", propsFile, "--ignore-formatted")...)
		if out, err := format.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("realkafka: formatting node %d storage: %v\n%s", n.ID, err, out)
		}
		n.argv = append([]string{java}, append(jvm, "kafka.Kafka", propsFile)...)
		n.env = os.Environ()
		n.LogFile = filepath.Join(nodeDir, "kafka.log")
	}
	return c, nil
}

// Argv is the node's command line (java, its options, kafka.Kafka and the properties
// file).
func (n *Node) Argv() []string { return append([]string{}, n.argv...) }

// LiveBrokers is the number of brokers in the metadata that the broker at addr serves.
func LiveBrokers(ctx context.Context, addr string) (int, error) { return liveBrokers(ctx, addr) }

func brokerConfig(o Options, n *Node, voters, dataDir string) string {
	rf, minISR := 1, 1
	if o.Nodes >= 3 {
		rf, minISR = 3, 2
	}
	props := map[string]string{
		"process.roles":                                    "broker,controller",
		"node.id":                                          strconv.Itoa(n.ID),
		"controller.quorum.voters":                         voters,
		"listeners":                                        "PLAINTEXT://" + n.Addr + ",CONTROLLER://" + n.ControllerAddr,
		"advertised.listeners":                             "PLAINTEXT://" + n.Addr,
		"controller.listener.names":                        "CONTROLLER",
		"listener.security.protocol.map":                   "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"inter.broker.listener.name":                       "PLAINTEXT",
		"log.dirs":                                         dataDir,
		"auto.create.topics.enable":                        "false",
		"unclean.leader.election.enable":                   "false",
		"default.replication.factor":                       strconv.Itoa(rf),
		"min.insync.replicas":                              strconv.Itoa(minISR),
		"offsets.topic.replication.factor":                 strconv.Itoa(rf),
		"offsets.topic.num.partitions":                     "10",
		"transaction.state.log.replication.factor":         strconv.Itoa(rf),
		"transaction.state.log.min.isr":                    strconv.Itoa(minISR),
		"share.coordinator.state.topic.replication.factor": strconv.Itoa(rf),
		"share.coordinator.state.topic.min.isr":            strconv.Itoa(minISR),
		"group.initial.rebalance.delay.ms":                 "0",
		"num.network.threads":                              "2",
		"num.io.threads":                                   "4",
		"num.recovery.threads.per.data.dir":                "1",
		"log.segment.bytes":                                strconv.Itoa(64 << 20),
	}
	for k, v := range o.Config {
		props[k] = v
	}
	var b strings.Builder
	for k, v := range props {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	return b.String()
}

// Brokers are the bootstrap addresses of every node.
func (c *Cluster) Brokers() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// BrokerList is Brokers joined by commas (KAFKA_BROKERS).
func (c *Cluster) BrokerList() string { return strings.Join(c.Brokers(), ",") }

// Node returns the node with the given id (nil if none).
func (c *Cluster) Node(id int) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// NodeAt returns the node whose broker listens on addr (nil if none).
func (c *Cluster) NodeAt(addr string) *Node {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// WaitReady waits until a running broker reports at least brokers live brokers in its
// metadata.
func (c *Cluster) WaitReady(ctx context.Context, brokers int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			got, err := liveBrokers(ctx, n.Addr)
			if err == nil && got >= brokers {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("%d of %d brokers registered", got, brokers)
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("realkafka: Kafka %s did not become ready: %v; last log lines:\n%s", c.Version, last, c.logTails(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) logTails(n int) string {
	var b strings.Builder
	for _, node := range c.Nodes {
		fmt.Fprintf(&b, "--- node %d (%s)\n%s\n", node.ID, node.LogFile, node.LogTail(n))
	}
	return b.String()
}

func liveBrokers(ctx context.Context, addr string) (int, error) {
	d := kafka.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	bs, err := conn.Brokers()
	return len(bs), err
}

// Close kills every node and removes the cluster's directory when it made it.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	if c.ownDir {
		_ = os.RemoveAll(c.dir)
	}
}

// Start starts the node's process (again) with its configuration and data.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && !isDone(n.done) {
		return fmt.Errorf("realkafka: node %d is already running", n.ID)
	}
	logf, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== realkafka: starting node %d at %s\n", n.ID, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(n.argv[0], n.argv[1:]...)
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test binary that dies (or ends without closing its clusters) must not leave
	// brokers behind: the kernel kills them when their parent goes (see spawn).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := spawn(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("realkafka: starting node %d: %w", n.ID, err)
	}
	done := make(chan struct{})
	n.cmd, n.done = cmd, done
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// WaitServing waits until the node's broker answers a metadata request.
func (n *Node) WaitServing(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := liveBrokers(ctx, n.Addr); err == nil {
			return nil
		}
		if !n.Running() {
			return fmt.Errorf("realkafka: node %d exited: %v\n%s", n.ID, n.ExitErr(), n.LogTail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("realkafka: node %d did not serve within %s\n%s", n.ID, timeout, n.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Running reports whether the process is alive (a frozen one is alive).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil && !isDone(n.done)
}

// PID is the process id of the running process (0 if none).
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || isDone(n.done) {
		return 0
	}
	return n.cmd.Process.Pid
}

// ExitErr is how the last process ended.
func (n *Node) ExitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Kill sends SIGKILL and waits for the process to be gone. A frozen node dies too.
func (n *Node) Kill() { n.signalAndWait(syscall.SIGKILL, 30*time.Second) }

// Stop sends SIGTERM (a controlled shutdown: leadership moves away first) and waits up
// to timeout, then kills.
func (n *Node) Stop(timeout time.Duration) error {
	if n.signalAndWait(syscall.SIGTERM, timeout) {
		return nil
	}
	n.Kill()
	return fmt.Errorf("realkafka: node %d did not stop within %s and was killed", n.ID, timeout)
}

// Pause freezes the process (SIGSTOP): its sockets stay open and nothing answers.
func (n *Node) Pause() { n.signal(syscall.SIGSTOP) }

// Resume thaws a paused process (SIGCONT).
func (n *Node) Resume() { n.signal(syscall.SIGCONT) }

func (n *Node) signal(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && !isDone(n.done) {
		_ = n.cmd.Process.Signal(sig)
	}
}

// signalAndWait reports whether the process was gone within timeout.
func (n *Node) signalAndWait(sig syscall.Signal, timeout time.Duration) bool {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil || isDone(done) {
		return true
	}
	_ = cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		_ = cmd.Process.Signal(syscall.SIGCONT) // a frozen JVM cannot shut down
	}
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// LogTail returns the last n lines of the node's log file.
func (n *Node) LogTail(lines int) string {
	b, err := os.ReadFile(n.LogFile)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func isDone(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// freePorts returns n distinct free loopback ports (held open together, so they differ).
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// newClusterID is a KRaft cluster id: a random UUID in unpadded URL-safe base64. Like
// Kafka's own Uuid.randomUuid, it never starts with '-', which the storage tool would
// take for an option.
func newClusterID() (string, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		if id := base64.RawURLEncoding.EncodeToString(b); id[0] != '-' {
			return id, nil
		}
	}
}

// ErrNoMaven is returned when a version's classpath is not cached and mvn is missing.
var ErrNoMaven = errors.New("realkafka: mvn is needed once per Kafka version to resolve its jars from Maven Central")

// spawnReqs feeds the spawner: one goroutine locked to its OS thread for the life of the
// process starts every node. Pdeathsig fires when the thread that forked the child ends,
// not the process, and the Go runtime may end other threads at any time.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnReqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawnReqs <- r
	return <-r.err
}

const (
	tempPrefix = "realkafka-"
	ownerFile  = "owner.pid"
)

// removeStaleDirs removes the temporary directories of clusters whose owning process is
// gone (a test binary that shares a cluster never closes it; its brokers died with it).
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}
