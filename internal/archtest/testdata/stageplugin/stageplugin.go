// Package stageplugin is a fixture for the architecture test: a stage type
// written the way a third party would write one, importing nothing of
// labelpipe but the pipeline package. Its dependencies are what every
// stage-only plugin pays for, so rule 4 is checked on it.
// In a config: {type: stamp, key: source, value: aquarium}.
package stageplugin

import (
	"context"

	"github.com/labelpipe/labelpipe/pipeline"
)

// Register adds the stamp stage type to r.
func Register(r *pipeline.Registry) {
	r.RegisterStage("stamp", pipeline.NewStageType(
		"stamps a fixed attribute on every export; drops one already stamped",
		Defaults, build))
}

// Config configures the stamp stage.
type Config struct {
	// Key is the attribute to set.
	Key string `yaml:"key"`
	// Value is what it is set to.
	Value string `yaml:"value"`
}

// Defaults returns the stamp stage's default config.
func Defaults() *Config { return &Config{Key: "stamped", Value: "true"} }

func build(c *Config, _ pipeline.Env) (pipeline.Stage, error) {
	return &Stamp{key: c.Key, value: c.Value}, nil
}

// Stamp is the stamp stage.
type Stamp struct {
	key, value string
}

var _ pipeline.Stage = (*Stamp)(nil)

// Process sets the attribute and passes the export on, or drops it when
// an earlier stage already set it.
func (s *Stamp) Process(_ context.Context, e *pipeline.Export) error {
	if _, ok := e.Attrs[s.key]; ok {
		return pipeline.Drop("already stamped %s", s.key)
	}
	e.SetAttr(s.key, s.value)
	return nil
}
