#!/usr/bin/perl
# Print the crates that are linked into the binaries (normal dependencies of
# the root package, resolved for one target), with version and licence.
# Input: `cargo metadata --format-version 1 --locked --filter-platform TRIPLE`
# on stdin. Used by debian/rules for /usr/share/doc/clearify-workerd/.
use strict;
use warnings;
use JSON::PP;

local $/;
my $meta = JSON::PP->new->decode(<STDIN>);
my %pkg = map { $_->{id} => $_ } @{ $meta->{packages} };
my %node = map { $_->{id} => $_ } @{ $meta->{resolve}{nodes} };
my $root = $meta->{resolve}{root} or die "crate-licenses: no root package\n";

my %seen;
my @todo = ($root);
while (my $id = shift @todo) {
    next if $seen{$id}++;
    for my $dep (@{ $node{$id}{deps} }) {
        # Only normal (linked) dependencies: kind null. Skip dev and build.
        next unless grep { !defined $_->{kind} } @{ $dep->{dep_kinds} };
        push @todo, $dep->{pkg};
    }
}
delete $seen{$root};

print "Rust crates statically linked into clearify-workerd and clearifyctl\n";
print "(from Cargo.lock; the sources are on https://crates.io):\n\n";
for my $id (sort { $pkg{$a}{name} cmp $pkg{$b}{name} || $pkg{$a}{version} cmp $pkg{$b}{version} } keys %seen) {
    my $p = $pkg{$id};
    printf "%-32s %-12s %s\n", $p->{name}, $p->{version}, $p->{license} // 'see crate';
}
