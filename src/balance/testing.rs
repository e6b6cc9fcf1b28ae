//! A plain in-memory [`Servers`] for the policies' tests and benchmarks.

use super::servers::Servers;

#[derive(Debug, Clone)]
pub struct Fixed {
    pub weights: Vec<u32>,
    pub up: Vec<bool>,
    pub in_flight: Vec<u32>,
    pub latency: Vec<f64>,
}

impl Fixed {
    pub fn new(weights: Vec<u32>) -> Self {
        let n = weights.len();
        Self {
            weights,
            up: vec![true; n],
            in_flight: vec![0; n],
            latency: vec![0.0; n],
        }
    }
}

impl Servers for Fixed {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn available(&self, i: usize) -> bool {
        self.up[i]
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
    fn latency(&self, i: usize) -> f64 {
        self.latency[i]
    }
}
