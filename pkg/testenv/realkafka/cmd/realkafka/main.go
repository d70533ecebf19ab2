// Command realkafka runs a real Apache Kafka cluster (KRaft, 1 or 3 nodes) on loopback
// until interrupted, for trying PulseBoard against the real engine by hand and for
// `make bench`. It prints the bootstrap list on its first line of standard output:
//
//	cd pkg && go run ./testenv/realkafka/cmd/realkafka -nodes 3 -version 4.4.0
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

func main() {
	version := flag.String("version", realkafka.Latest, "Apache Kafka version (Maven Central)")
	nodes := flag.Int("nodes", 1, "combined controller+broker nodes")
	heap := flag.Int("heap-mb", 512, "maximum heap of each node, MiB")
	dir := flag.String("dir", "", "data directory (default: a temporary one, removed on exit)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := realkafka.Start(ctx, realkafka.Options{Version: *version, Nodes: *nodes, HeapMB: *heap, Dir: *dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(c.BrokerList())
	fmt.Fprintf(os.Stderr, "realkafka: Kafka %s, %d node(s) at %s; Ctrl-C stops them\n", c.Version, len(c.Nodes), c.BrokerList())
	<-ctx.Done()
	c.Close()
}
