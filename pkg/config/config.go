// Package config loads PulseBoard's 12-factor configuration. Every service declares its
// own Config struct with `env` tags and documented defaults; this package turns an
// environment (the process's, plus .env when present) into such a struct. The
// environment is always passed in, so tests start services with a map.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/caarlos0/env/v11"
	"github.com/joho/godotenv"
)

// Env is an environment: variable name → value.
type Env map[string]string

// FromOS returns the process environment, with the variables of dotenvPath (if the file
// exists) filling in what the process does not set. Real environment variables always win.
func FromOS(dotenvPath string) (Env, error) {
	e := Env{}
	if dotenvPath != "" {
		vals, err := godotenv.Read(dotenvPath)
		switch {
		case err == nil:
			for k, v := range vals {
				e[k] = v
			}
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("reading %s: %w", dotenvPath, err)
		}
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			e[k] = v
		}
	}
	return e, nil
}

// Get returns a variable's value ("" when unset).
func (e Env) Get(name string) string { return e[name] }

// Parse fills a Config struct of type T from e, applying envDefault tags.
func Parse[T any](e Env) (T, error) {
	var cfg T
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: e}); err != nil {
		return cfg, fmt.Errorf("configuration: %w", err)
	}
	return cfg, nil
}

// Kafka is the Kafka configuration shared by every service.
type Kafka struct {
	// Brokers is the bootstrap list; empty means the embedded broker (all-in-one only).
	Brokers []string `env:"KAFKA_BROKERS" envSeparator:","`
	// Topic receives every accepted event, keyed by project id.
	Topic string `env:"KAFKA_TOPIC" envDefault:"pulseboard.events"`
	// DLQTopic receives messages the consumer can neither decode nor store.
	DLQTopic string `env:"KAFKA_DLQ_TOPIC" envDefault:"pulseboard.events.dlq"`
	// Partitions is used when PulseBoard creates the topic (embedded broker, or a cluster
	// without it).
	Partitions int `env:"KAFKA_PARTITIONS" envDefault:"12"`
	// EmbeddedPort is where the embedded broker listens; 0 picks a free port.
	EmbeddedPort int `env:"KAFKA_EMBEDDED_PORT" envDefault:"9092"`
}

// Validate reports every problem at once.
func (k Kafka) Validate() error {
	var errs []error
	if k.Topic == "" {
		errs = append(errs, errors.New("KAFKA_TOPIC must not be empty"))
	}
	if k.DLQTopic == "" || k.DLQTopic == k.Topic {
		errs = append(errs, errors.New("KAFKA_DLQ_TOPIC must be set and differ from KAFKA_TOPIC"))
	}
	if k.Partitions < 1 || k.Partitions > 10000 {
		errs = append(errs, fmt.Errorf("KAFKA_PARTITIONS must be between 1 and 10000, got %d", k.Partitions))
	}
	if k.EmbeddedPort < 0 || k.EmbeddedPort > 65535 {
		errs = append(errs, fmt.Errorf("KAFKA_EMBEDDED_PORT must be a port number, got %d", k.EmbeddedPort))
	}
	return errors.Join(errs...)
}

// DefaultDatabaseURL is the local development database.
const DefaultDatabaseURL = "postgres://postgres@localhost:5432/pulseboard?sslmode=disable"

// MaskURL hides the password of a connection URL for logs.
func MaskURL(raw string) string {
	at := strings.LastIndex(raw, "@")
	scheme := strings.Index(raw, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return raw
	}
	userinfo := raw[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return raw[:scheme+3] + user + ":***" + raw[at:]
	}
	return raw
}
